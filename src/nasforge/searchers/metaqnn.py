"""MetaQNN: epsilon-greedy Q-learning over the sequence of architecture decisions.

Baker, Gupta, Naik & Raskar, "Designing Neural Network Architectures using Reinforcement
Learning", ICLR 2017. Reference implementation: ``bowenbaker/metaqnn`` (``libs/grammar/q_learner.py``
for the agent and its Q update, ``q_server.py`` for the replay loop and the epsilon schedule,
``models/cifar10/state_space_parameters.py`` for the hyper-parameters).

States and actions for a generic space
--------------------------------------
MetaQNN's agent builds a CNN layer by layer: the state is the layer just added (its type and
parameters, at depth ``i``) and an action picks the next layer. Here the layers are the space's
decisions in canonical order, so:

* state ``s_i = (i, a_{i-1})``: the depth ``i`` (index of the next decision) and the option taken
  at the previous decision (``s_0`` is the single start state);
* action ``a_i``: an option of decision ``i``; it leads to ``s_{i+1} = (i + 1, a_i)``;
* ``s_n`` (after the last decision) is terminal: the architecture is complete and trained.

The Q-table is therefore one ``(options of decision i-1) x (options of decision i)`` matrix per
depth (a ``1 x options`` row at depth 0), every entry initialised to ``q_init = 0.5`` (the
paper's Section 3 / the reference ``init_utility``).

Sampling (``ask``)
------------------
At each depth the agent takes a uniformly random option with probability epsilon, otherwise the
option of largest Q (ties broken uniformly, as the reference does). Epsilon follows the paper's
Table 2 schedule (also the reference ``epsilon_schedule``): the number of *unique* models trained
at each epsilon is ``1.0: 1500, 0.9: 100, 0.8: 100, 0.7: 100, 0.6: 150, 0.5: 150, 0.4: 150,
0.3: 150, 0.2: 150, 0.1: 150`` (2,700 in all, the CIFAR-10 run). ``schedule_scale`` multiplies
the counts so that the schedule fits another budget: phase ``k`` ends after
``floor(scale * (n_1 + ... + n_k) + 0.5)`` unique models (phases that get no model are skipped),
e.g. ``schedule_scale = 150 / 2700`` spends about 83 models at epsilon 1.0 and about 6-8 at
each later epsilon. After the last phase the search goes on at the last epsilon (0.1); the
reference stops there.

Like the reference (``q_server.generate_new_netork``), an architecture that was already trained
is not trained again: when the agent samples one, it is added to the replay memory once more,
with its recorded fitness, the replay updates below are applied, and the agent samples again.
The searcher thus never proposes an architecture twice (``no_repeats``); an architecture that was
proposed but never told (the loop found it infeasible) is simply sampled again, as the
reference does for a network that is being trained on another machine. After
``_MAX_DRAWS`` draws without a new architecture the searcher falls back to uniform sampling of
an unproposed one, and raises :class:`~nasforge.errors.BudgetError` when the space is exhausted.

Update (``tell``)
-----------------
Every told trial joins the replay memory. Then ``replay_number`` entries are drawn uniformly,
with replacement, from the memory (the paper: 100; the reference file uses 128) and each entry's
transitions are updated by the Q-learning rule (paper Eq. 3), the terminal transition first and
then backwards, as the reference ``update_q_value_sequence`` does::

    Q(s_i, a_i) <- (1 - alpha) Q(s_i, a_i) + alpha [r_i + gamma * max_a' Q(s_{i+1}, a')]

with ``alpha = 0.01`` and ``gamma = 1`` (paper Section 4 and the reference), ``r_i = 0`` for
every transition but the last, and, for the last one, ``r_{n-1}`` = the trial's reward and no
bootstrap term (``s_n`` is terminal). The new trial itself is updated only if it is drawn, as in
the paper and the reference.

Reward: the validation accuracy in [0, 1] (the paper's reward). The fitness is divided by
``reward_scale``; by default (``None``) the scale is 100 as soon as any told finite fitness
exceeds 1 (the fitness is an accuracy in %, as nasforge's evaluators report it) and 1 before
that; it is recomputed at each replay, so every entry uses the same scale. Give ``reward_scale``
explicitly for fitnesses that are not accuracies. A failed or infeasible trial (fitness
``-inf``) gets reward 0: the reference gives a network that could not be trained an accuracy
of 0 as well, and 0 is below every real accuracy. When some told fitness is negative (a
``min:`` objective, or the Pareto wrapper's scalar) a failure gets the lowest told reward
instead, so it never outranks a real trial.

Invalid combinations: an architecture that the space's ``check`` rejects is discarded (no
update) and the agent samples again. Spaces cannot judge a partial architecture, so options are
not masked during the walk; the nb201, darts and mobilenet spaces accept every combination.

Deviations from the paper
-------------------------
- The state is the (depth, previous option) pair defined above, not the paper's layer grammar
  (layer type, kernel, stride, representation-size bucket, termination action). There is no
  variable-depth termination action: every architecture has one option per decision.
- The epsilon schedule can be scaled (``schedule_scale``; 1.0, the default, is the paper's) and
  continues at the last epsilon when it runs out.
- ``reward_scale`` normalisation and the reward 0 of failed trials (see above).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int, check_probability
from nasforge.registry import register
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace

#: Paper Table 2 (and ``epsilon_schedule`` of the reference CIFAR-10 parameters): (epsilon,
#: number of unique models trained at that epsilon).
PAPER_EPSILON_SCHEDULE: tuple[tuple[float, int], ...] = (
    (1.0, 1500), (0.9, 100), (0.8, 100), (0.7, 100), (0.6, 150),
    (0.5, 150), (0.4, 150), (0.3, 150), (0.2, 150), (0.1, 150),
)

_MAX_DRAWS = 1000  # Q-policy draws per ask before falling back to uniform sampling
_MAX_UNIFORM = 10_000  # uniform draws of that fallback before the space counts as exhausted


@register("method", "metaqnn")
class MetaQNN(Searcher):
    """Epsilon-greedy tabular Q-learning with experience replay (see the module docstring).

    Args:
        space: the search space (any).
        seed: seed of ``self.rng``, the only source of randomness.
        learning_rate: alpha of the Q update (paper: 0.01).
        discount: gamma of the Q update (paper: 1.0).
        q_init: initial Q-value of every state-action pair (paper: 0.5).
        replay_number: replay-memory samples updated after each trial (paper: 100).
        schedule_scale: multiplier of the model counts of the epsilon schedule (1.0: the paper's
            2,700 models; ``budget / 2700`` fits a budget of ``budget`` trials).
        epsilon_schedule: ``(epsilon, unique models)`` phases (default: the paper's Table 2).
        reward_scale: the reward is ``fitness / reward_scale``; None: 100 once any fitness > 1,
            else 1 (accuracies in % or in [0, 1]).

    Raises:
        ConfigError: an option outside its range (the message names it and the range).
        BudgetError: ``replay_number`` not a non-negative integer.
    """

    name: ClassVar[str] = "metaqnn"
    paper: ClassVar[str] = (
        "Baker, Gupta, Naik & Raskar, Designing Neural Network Architectures using Reinforcement "
        "Learning, ICLR 2017"
    )
    no_repeats: ClassVar[bool] = True
    # a short schedule that reaches the greedy phases within 16 trials, and a small replay
    smoke_options: ClassVar[dict[str, Any]] = {"replay_number": 4, "schedule_scale": 0.005}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, learning_rate: float = 0.01, discount: float = 1.0,
        q_init: float = 0.5, replay_number: int = 100, schedule_scale: float = 1.0,
        epsilon_schedule: Sequence[Sequence[float]] | None = None, reward_scale: float | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        self.learning_rate = check_probability("learning_rate", learning_rate, low_open=True)
        self.discount = check_probability("discount", discount)
        self.q_init = check_float("q_init", q_init)
        self.replay_number = check_int("replay_number", replay_number, low=0)
        self.schedule_scale = check_float("schedule_scale", schedule_scale, low=0.0, low_open=True)
        if reward_scale is not None:
            reward_scale = check_float("reward_scale", reward_scale, low=0.0, low_open=True)
        self.reward_scale = reward_scale
        phases = PAPER_EPSILON_SCHEDULE if epsilon_schedule is None else epsilon_schedule
        self.epsilon_schedule = self._parse_schedule(phases)
        # phase k covers unique-model counts [ends[k-1], ends[k])
        ends, total = [], 0.0
        for _, count in self.epsilon_schedule:
            total += count
            ends.append(math.floor(self.schedule_scale * total + 0.5))
        self._phase_ends = ends

        decisions = space.decisions()
        sizes = [len(opts) for opts in decisions.values()]
        # Q[i][row][a]: row = option of decision i-1 (0 for the start state), a = option of decision i
        self.q: list[list[list[float]]] = [
            [[self.q_init] * sizes[i] for _ in range(1 if i == 0 else sizes[i - 1])] for i in range(len(sizes))
        ]
        self.replay: list[tuple[tuple[int, ...], float]] = []  # (option indices, fitness), every told trial
        self._fitness: dict[tuple[int, ...], float] = {}  # unique told architectures
        self._lowest = 0.0  # min(0, lowest finite fitness told): what a failed trial is scored
        self._asked: set[tuple[int, ...]] = set()  # every proposed or told architecture
        self._percent = False  # a told finite fitness exceeded 1 (auto reward scale)

    @staticmethod
    def _parse_schedule(phases: Sequence[Sequence[float]]) -> tuple[tuple[float, int], ...]:
        out = []
        try:
            items = [tuple(p) for p in phases]
        except TypeError:
            raise ConfigError(f"epsilon_schedule must be a sequence of (epsilon, models) pairs, got {phases!r}") from None
        if not items:
            raise ConfigError("epsilon_schedule must have at least one (epsilon, models) phase")
        for item in items:
            if len(item) != 2:
                raise ConfigError(f"epsilon_schedule phases are (epsilon, models) pairs, got {item!r}")
            eps = check_probability("epsilon_schedule epsilon", item[0])
            count = check_int("epsilon_schedule model count", item[1], error=ConfigError)
            out.append((eps, count))
        return tuple(out)

    @classmethod
    def options(cls) -> dict[str, Any]:
        # all from the paper (Sections 3-4, Table 2); the reference uses replay_number = 128
        return {
            "learning_rate": 0.01, "discount": 1.0, "q_init": 0.5, "replay_number": 100,
            "schedule_scale": 1.0, "epsilon_schedule": PAPER_EPSILON_SCHEDULE, "reward_scale": None,
        }

    # ---- schedule and reward -----------------------------------------------------------------
    def epsilon(self) -> float:
        """Epsilon for the next proposal: the schedule phase of the number of unique told models."""
        done = len(self._fitness)
        for (eps, _), end in zip(self.epsilon_schedule, self._phase_ends):
            if done < end:
                return eps
        return self.epsilon_schedule[-1][0]

    def reward(self, fitness: float) -> float:
        """The terminal reward of a trial: fitness / scale; for a failed one (-inf or NaN) 0, or the
        lowest told reward when some fitness is negative (so a failure never outranks a real trial)."""
        scale = self.reward_scale if self.reward_scale is not None else (100.0 if self._percent else 1.0)
        if not math.isfinite(fitness):
            return self._lowest / scale
        return fitness / scale

    # ---- Q-learning --------------------------------------------------------------------------
    def update_sequence(self, seq: Sequence[int], reward: float) -> None:
        """Q update of every transition of ``seq``, terminal first (reference ``update_q_value_sequence``)."""
        alpha, gamma, q = self.learning_rate, self.discount, self.q
        n = len(seq)
        for i in range(n - 1, -1, -1):
            row = q[i][seq[i - 1] if i else 0]
            a = seq[i]
            target = reward if i == n - 1 else gamma * max(q[i + 1][a])
            row[a] += alpha * (target - row[a])

    def _replay_updates(self) -> None:
        memory, rng = self.replay, self.rng
        for _ in range(self.replay_number):
            seq, fitness = memory[rng.randrange(len(memory))]
            self.update_sequence(seq, self.reward(fitness))

    def _walk(self, epsilon: float) -> tuple[int, ...]:
        rng, seq = self.rng, []
        prev = 0
        for row_set in self.q:
            row = row_set[prev]
            if rng.random() < epsilon:
                a = rng.randrange(len(row))
            else:
                best = max(row)
                a = rng.choice([j for j, v in enumerate(row) if v == best])
            seq.append(a)
            prev = a
        return tuple(seq)

    # ---- ask / tell --------------------------------------------------------------------------
    def ask(self) -> Arch:
        epsilon = self.epsilon()
        for _ in range(_MAX_DRAWS):
            seq = self._walk(epsilon)
            if seq in self._fitness:  # trained already: replay it again instead of retraining
                self.replay.append((seq, self._fitness[seq]))
                self._replay_updates()
                continue
            if seq in self._asked:  # proposed but never told (infeasible): sample again
                continue
            arch = self.space.arch_from_indices(seq)
            if not self.space.is_valid(arch):
                continue
            self._asked.add(seq)
            return arch
        for _ in range(_MAX_UNIFORM):  # the policy keeps to known architectures: a uniform new one
            arch = self.space.sample(self.rng)
            seq = self.space.indices_of(self.space.validate(arch))
            if seq not in self._asked:
                self._asked.add(seq)
                return arch
        raise BudgetError(
            f"metaqnn found no architecture it has not proposed yet ({len(self._asked)} proposed, the space "
            f"{self.space.name} has at most {self.space.size()}); the space looks exhausted"
        )

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        seq = self.space.indices_of(self.space.validate(arch))
        fitness = float(fitness)
        if math.isnan(fitness):
            fitness = -math.inf
        if math.isfinite(fitness) and fitness > 1.0:
            self._percent = True
        if math.isfinite(fitness):
            self._lowest = min(self._lowest, fitness)
        self._asked.add(seq)
        self._fitness.setdefault(seq, fitness)
        self.replay.append((seq, fitness))
        self._replay_updates()
