"""Policies: what path a supernet runs on one step (see ``nasforge.nn.choice``).

A policy is an ``nn.Module`` that holds the architecture state of a one-shot method (logits,
a controller, scaling factors...) and, called, returns a ``path``: choice key -> selection (an
op name, a weight tensor or a :class:`~nasforge.nn.choice.Mix`). Its learnable architecture
parameters are its ``parameters()``; any random state it owns is in its ``state_dict()``, so
a checkpoint of the policy restores it exactly.
"""

from nasforge.policies.base import Policy
from nasforge.policies.binary_gate import BinaryGatePolicy
from nasforge.policies.fair import FairPolicy
from nasforge.policies.gumbel import GumbelPolicy, HardGumbelPolicy, gumbel_softmax
from nasforge.policies.path_dropout import PathDropoutPolicy
from nasforge.policies.softmax import SoftmaxPolicy
from nasforge.policies.uniform import UniformPolicy

__all__ = [
    "BinaryGatePolicy", "FairPolicy", "GumbelPolicy", "HardGumbelPolicy", "PathDropoutPolicy", "Policy", "SoftmaxPolicy", "UniformPolicy",
    "gumbel_softmax",
]
