"""nasforge: one search step of DARTS / GDAS / SPOS on the NB201 supernet, and a fixed-network step.

    .venv/bin/python benchmarks/peers/nasforge_worker.py --method darts --steps 10 --warmup 2 --seed 0

The step is made of the library's own pieces, as ``nasforge.methods.darts`` / ``gdas`` run them
(shared settings in ``_protocol``):

- darts: ``arch_step`` along ``SoftmaxPolicy()`` on the valid batch (gradients of the logits only)
  + ``weight_step`` along the detached softmax weights (every candidate runs; ``none`` included
  as the reference does; clip 5, SGD);
- gdas: ``weight_step`` along a fresh ``HardGumbelPolicy()`` sample (tau 10; only the sampled op
  of each edge runs) + ``arch_step`` along another sample;
- spos: ``weight_step`` along the path of a uniformly sampled cell (``UniformPolicy``);
- fixed: ``space.build(fixed_arch)`` (affine BN with running statistics), forward, backward, SGD.

Search cells use ``affine=False, track_running_stats=False`` BN, as the peers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

import nasforge  # noqa: E402
from nasforge.policies import HardGumbelPolicy, SoftmaxPolicy, UniformPolicy  # noqa: E402
from nasforge.train.bilevel import arch_step, weight_step  # noqa: E402

IMPL = "nasforge"


def main() -> int:
    args = P.parse_args()
    P.setup_torch(args.seed)
    if args.method not in P.METHODS:
        P.emit_error(f"unknown method {args.method!r}; valid: {', '.join(P.METHODS)}")
        return 0
    space = nasforge.get_space("nb201")
    train, valid = P.make_batches(args.channels_last)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    if args.method == "fixed":
        net = space.build(space.parse(P.arch_str(P.fixed_arch(args.seed))), C=P.C, N=P.N_CELLS).to(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=P.W_LR, momentum=P.W_MOMENTUM, weight_decay=P.W_DECAY, nesterov=P.W_NESTEROV)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(train[0]), train[1]).backward()
            opt.step()
    else:
        supernet = space.supernet(C=P.C, N=P.N_CELLS, affine=False, track_running_stats=False).to(memory_format=fmt)
        w_opt = torch.optim.SGD(supernet.parameters(), lr=P.W_LR, momentum=P.W_MOMENTUM, weight_decay=P.W_DECAY,
                                nesterov=P.W_NESTEROV)
        if args.method == "spos":
            uniform = UniformPolicy(space, supernet, seed=args.seed)

            def step() -> None:
                weight_step(supernet, uniform(), train, w_opt, loss_fn=F.cross_entropy, grad_clip=P.GRAD_CLIP, where="spos")
        else:
            policy = SoftmaxPolicy(supernet.choices()) if args.method == "darts" else HardGumbelPolicy(supernet.choices(), tau=P.GDAS_TAU)
            a_opt = torch.optim.Adam(policy.parameters(), lr=P.A_LR, betas=P.A_BETAS, weight_decay=P.A_DECAY)

            def step() -> None:
                if args.method == "darts":
                    arch_step(supernet, policy, valid, a_opt, loss_fn=F.cross_entropy, where="arch")
                with torch.no_grad():
                    path = policy()
                weight_step(supernet, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=P.GRAD_CLIP, where="weight")
                if args.method == "gdas":
                    arch_step(supernet, policy, valid, a_opt, loss_fn=F.cross_entropy, where="arch")

    setup_rss = P.peak_rss_mb()
    times = P.time_steps(step, args.steps, args.warmup)
    P.emit(IMPL, args.method, times, "nasforge library steps (arch_step / weight_step)", setup_rss_mb=round(setup_rss, 1),
           channels_last=bool(args.channels_last))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
