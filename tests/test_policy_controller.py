"""The ENAS LSTM controller: valid samples, log-probabilities, entropy, logit shaping, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.errors import ArchError, ConfigError
from nasforge.policies.controller import ControllerPolicy
from nasforge.spaces.darts import OPS

NB201 = {"lstm_size": 32, "lstm_layers": 2, "temperature": 5.0, "tanh_constant": 2.5, "op_tanh_reduce": 1.0}


def nb201_controller(**kw):  # type: ignore[no-untyped-def]
    space = nasforge.get_space("nb201")
    net = space.supernet(C=4, N=1, affine=False, track_running_stats=False)
    return space, net, ControllerPolicy(space, net, **{**NB201, **kw})


def darts_controller(**kw):  # type: ignore[no-untyped-def]
    space = nasforge.get_space("darts")
    net = space.supernet(C=4, layers=3)
    return space, net, ControllerPolicy(space, net, **kw)


def scale_params(controller: ControllerPolicy, factor: float) -> None:
    with torch.no_grad():
        for p in controller.parameters():
            p.mul_(factor)


def zero_params(controller: ControllerPolicy) -> None:
    with torch.no_grad():
        for p in controller.parameters():
            p.zero_()


# ---- samples --------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [nb201_controller, darts_controller])
def test_samples_are_valid_archs_and_forward_returns_their_single_path(make) -> None:  # type: ignore[no-untyped-def]
    space, net, controller = make(seed=3)
    seen_ops: set[str] = set()
    archs = set()
    for _ in range(40):
        path = controller()
        arch = controller.last.arch
        assert space.validate(arch) is arch
        assert path == net.path_for(arch)
        assert all(isinstance(v, str) for v in path.values())  # one op per key: a single path
        seen_ops.update(v for v in path.values() if v != "none")
        archs.add(arch)
    assert len(archs) == 40  # the controller explores (its logits are nearly flat at init)
    expected = {"skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"} if space.name == "nb201" else set(OPS)
    assert seen_ops == expected


def test_darts_sample_steps_map_onto_the_genotype() -> None:
    space, _, controller = darts_controller(seed=1)
    for _ in range(10):
        sample = controller.sample()
        steps = {s.name: s for s in sample.steps}
        assert len(sample.steps) == 2 * 4 * 4
        for cell in ("normal", "reduce"):
            for i in range(4):
                first, second = steps[f"{cell}_n{i}_in1"], steps[f"{cell}_n{i}_in2"]
                assert first.options == tuple(str(j) for j in range(i + 2))
                # the second input is drawn among the predecessors other than the first one
                assert second.options == tuple(str(j) for j in range(i + 2) if str(j) != first.choice)
                ops = (steps[f"{cell}_n{i}_op1"].choice, steps[f"{cell}_n{i}_op2"].choice)
                pairs = sorted(zip((int(first.choice), int(second.choice)), ops))
                assert sample.arch[f"{cell}_n{i}_in"] == f"{pairs[0][0]},{pairs[1][0]}"
                assert (sample.arch[f"{cell}_n{i}_op_a"], sample.arch[f"{cell}_n{i}_op_b"]) == (pairs[0][1], pairs[1][1])


# ---- log-probability and entropy -------------------------------------------------------------
def _lstm_by_hand(controller: ControllerPolicy, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]]):  # type: ignore[no-untyped-def]
    """One step of ENAS ``stack_lstm`` written out per layer: W is [2H, 4H], gates in the order i, f, o, g."""
    new = []
    size = x.shape[0]
    for w, (h, c) in zip(controller.lstm, state):
        gate = {name: torch.cat([x, h]) @ w[:, k * size:(k + 1) * size] for k, name in enumerate("ifog")}
        c = torch.sigmoid(gate["f"]) * c + torch.sigmoid(gate["i"]) * torch.tanh(gate["g"])
        h = torch.sigmoid(gate["o"]) * torch.tanh(c)
        new.append((h, c))
        x = h
    return x, new


def test_nb201_log_prob_and_entropy_match_an_independent_recomputation() -> None:
    _, _, controller = nb201_controller(seed=5)
    scale_params(controller, 20.0)  # peaked, unequal logits so that the check is not trivial
    head, embed = controller.heads[0], controller.embeds[0]
    for _ in range(5):
        with torch.no_grad():
            sample = controller.sample()
            size = controller.g_emb.shape[1]
            state = [(torch.zeros(size), torch.zeros(size)) for _ in range(2)]
            x = controller.g_emb[0]
            log_prob, entropy = 0.0, 0.0
            for action in sample.actions:
                out, state = _lstm_by_hand(controller, x, state)
                logits = 2.5 * torch.tanh((head.weight @ out + head.bias) / 5.0)
                logp = F.log_softmax(logits, dim=0)
                log_prob += float(logp[action])
                entropy -= float((logp.exp() * logp).sum())
                x = embed.weight[action]
        assert sample.log_prob.item() == pytest.approx(log_prob, abs=1e-4)
        assert sample.entropy.item() == pytest.approx(entropy, abs=1e-4)
        assert sample.log_prob.item() < -0.5  # not a degenerate, certain sample


def test_darts_log_prob_sums_the_taken_steps_and_replays_exactly() -> None:
    _, _, controller = darts_controller(seed=2)
    scale_params(controller, 10.0)
    sample = controller.sample()
    by_hand = sum(float(F.log_softmax(s.logits.detach(), dim=0)[s.index]) for s in sample.steps)
    assert sample.log_prob.item() == pytest.approx(by_hand, abs=1e-4)
    replay = controller.score(sample.actions)
    assert replay.arch == sample.arch
    assert torch.equal(replay.log_prob, sample.log_prob)
    # the first step by hand: two LSTM steps on g_emb give the input anchors' keys, a third the query
    with torch.no_grad():
        size = controller.g_emb.shape[1]
        state = [(torch.zeros(size), torch.zeros(size))]
        keys = []
        for _ in range(2):
            out, state = _lstm_by_hand(controller, controller.g_emb[0], state)
            keys.append(controller.attn_anchor.weight @ out)
        out, state = _lstm_by_hand(controller, controller.g_emb[0], state)
        scores = torch.stack([controller.attn_v.weight[0] @ torch.tanh(k + controller.attn_query.weight @ out) for k in keys])
    assert torch.allclose(sample.steps[0].logits.detach(), 1.10 * torch.tanh(scores), atol=1e-5)


def test_entropy_and_log_prob_of_uniform_controllers() -> None:
    _, _, nb = nb201_controller()
    zero_params(nb)  # h stays 0, every decision is uniform over its options
    s = nb.sample()
    assert s.entropy.item() == pytest.approx(6 * math.log(5), abs=1e-5)
    assert s.log_prob.item() == pytest.approx(-6 * math.log(5), abs=1e-5)
    _, _, da = darts_controller()
    zero_params(da)
    s = da.sample()
    per_cell = sum(math.log(i + 2) + math.log(i + 1) + 2 * math.log(7) for i in range(4))
    assert s.entropy.item() == pytest.approx(2 * per_cell, abs=1e-4)
    assert s.log_prob.item() == pytest.approx(-2 * per_cell, abs=1e-4)


def test_entropy_of_a_known_biased_head() -> None:
    _, _, controller = nb201_controller()
    zero_params(controller)
    bias = [3.0, -1.0, 0.0, 2.0, 0.5]
    with torch.no_grad():
        controller.heads[0].bias.copy_(torch.tensor(bias))
    logits = [2.5 * math.tanh(b / 5.0) for b in bias]  # temperature 5, tanh constant 2.5
    z = sum(math.exp(v) for v in logits)
    probs = [math.exp(v) / z for v in logits]
    entropy = -sum(p * math.log(p) for p in probs)
    sample = controller.sample()
    assert sample.entropy.item() == pytest.approx(6 * entropy, abs=1e-5)
    assert sample.log_prob.item() == pytest.approx(sum(math.log(probs[a]) for a in sample.actions), abs=1e-5)


# ---- logit shaping ------------------------------------------------------------------------------
def test_tanh_constant_bounds_index_and_op_logits() -> None:
    _, _, controller = darts_controller(tanh_constant=1.10, op_tanh_reduce=2.5)
    scale_params(controller, 200.0)
    sample = controller.sample()
    index_max = max(float(s.logits.detach().abs().max()) for s in sample.steps if "_in" in s.name)
    op_max = max(float(s.logits.detach().abs().max()) for s in sample.steps if "_op" in s.name)
    assert 1.0 < index_max <= 1.10 + 1e-6
    assert 0.4 < op_max <= 1.10 / 2.5 + 1e-6
    _, _, free = darts_controller(tanh_constant=None)
    free.load_state_dict(controller.state_dict())
    assert max(float(s.logits.detach().abs().max()) for s in free.sample().steps) > 10.0


def test_temperature_divides_the_logits() -> None:
    _, _, plain = nb201_controller(temperature=None, tanh_constant=None)
    scale_params(plain, 5.0)
    _, _, hot = nb201_controller(temperature=4.0, tanh_constant=None)
    hot.load_state_dict(plain.state_dict())
    a = plain.score([0, 1, 2, 3, 4, 0])
    b = hot.score([0, 1, 2, 3, 4, 0])
    for sa, sb in zip(a.steps, b.steps):
        assert torch.allclose(sa.logits / 4.0, sb.logits, atol=1e-6)


# ---- greedy decode, replay, state -------------------------------------------------------------
@pytest.mark.parametrize("make", [nb201_controller, darts_controller])
def test_greedy_decode_takes_the_argmax_and_strengths_derive_it(make) -> None:  # type: ignore[no-untyped-def]
    space, _, controller = make(seed=0)
    scale_params(controller, 10.0)
    twin = copy.deepcopy(controller)
    greedy = controller.sample(greedy=True)
    assert all(s.index == int(s.logits.argmax()) for s in greedy.steps)
    assert controller.sample(greedy=True).arch == greedy.arch
    assert controller.sample().arch == twin.sample().arch  # greedy decoding leaves the generator alone
    assert space.derive(controller.strengths()) == greedy.arch
    probs = controller.greedy_probabilities()
    assert list(probs) == [s.name for s in greedy.steps]
    assert all(abs(sum(p) - 1.0) < 1e-5 for p in probs.values())


def test_state_dict_restores_the_sampling_stream() -> None:
    _, _, a = darts_controller(seed=11)
    for _ in range(3):
        a.sample()
    state = copy.deepcopy(a.state_dict())
    expected = [a.sample().arch for _ in range(4)]
    _, _, b = darts_controller(seed=99)
    assert [b.sample().arch for _ in range(4)] != expected
    b.load_state_dict(state)
    assert [b.sample().arch for _ in range(4)] == expected


def test_actions_for_and_score_round_trip_and_reject_bad_actions() -> None:
    space, _, controller = nb201_controller(seed=4)
    sample = controller.sample()
    assert controller.actions_for(sample.arch) == sample.actions
    assert torch.equal(controller.score(controller.actions_for(sample.arch)).log_prob, sample.log_prob)
    with pytest.raises(ArchError, match="too few actions"):
        controller.score([0, 1])
    with pytest.raises(ArchError, match="7 actions given"):
        controller.score([0] * 7)
    with pytest.raises(ArchError, match=r"action 5 of step edge_1_0 out of range; valid: 0..4"):
        controller.score([5, 0, 0, 0, 0, 0])
    dspace, _, dc = darts_controller(seed=4)
    arch = dspace.sample(__import__("random").Random(0))
    assert dc.score(dc.actions_for(arch)).arch == arch


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lstm_size", 0, "lstm_size must be an int > 0"),
        ("lstm_layers", 1.5, "lstm_layers must be an int > 0"),
        ("temperature", 0.0, "temperature must be a finite number > 0 or None"),
        ("tanh_constant", -1.0, "tanh_constant must be a finite number > 0 or None"),
        ("op_tanh_reduce", None, "op_tanh_reduce must be a finite number > 0"),
    ],
)
def test_bad_controller_options(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        nb201_controller(**{option: value})
