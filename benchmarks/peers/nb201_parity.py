"""Step-level parity of nasforge's DARTS and GDAS with xautodl's NAS-Bench-201 reference code.

    .venv/bin/python benchmarks/peers/nb201_parity.py            # runs the xautodl side in runs/peers/xautodl
    .venv/bin/python benchmarks/peers/nb201_parity.py --write-fixture tests/data/xautodl_nb201_parity.json

Both implementations start from the SAME weights (nasforge's supernet, copied into xautodl's
``TinyNetworkDarts`` / ``TinyNetworkGDAS`` by ``_xautodl_nb201.to_xautodl_state``), the same
architecture parameters, the same two batches and, for GDAS, the same Gumbel noise (xautodl draws
it after ``torch.manual_seed(s)``; nasforge replays that draw through
``HardGumbelPolicy(noise=...)``). Then one search step of each as its search loop runs it:

* the architecture gradient at the starting weights (``alpha_grad0``) and the logits;
* a weight step: its gradients before clipping (``w_grad``), and the weights after the clipped
  SGD step (``weights1``);
* the architecture step after it: gradient (``alpha_grad1``) and the logits after Adam (``alpha1``).

nasforge is run three ways: ``darts`` (first order), ``gdas`` (default gradient form) and
``gdas_ref`` (``reference_gradient=True``). The table gives the largest relative difference
``max|a - b| / max|b|`` per quantity, and, as the noise floor, how far nasforge's float32 run is
from its own float64 run. ``--set C=16 --set N=5 --set batch=64`` changes the set-up. ``--write-fixture`` stores the set-up and the
reference outputs as text for ``tests/test_xautodl_parity.py``, which checks nasforge against them
in CI (where xautodl is not installed): small tensors in full, the per-parameter weight and
gradient dicts as digests (sum, sum of squares and the first 8 values of each tensor).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import _xautodl_nb201 as X  # noqa: E402

SETUP: dict[str, Any] = {
    "seed": 0, "C": 4, "N": 1, "batch": 16, "tau": 5.0, "lr": 0.025, "alpha_scale": 0.5,
    "noise_seeds": [11, 12, 10],  # weight step, architecture step, starting-point gradient
}
QUANTITIES = ("logits0", "alpha_grad0", "w_grad", "weights1", "alpha_grad1", "alpha1")


def make_inputs(setup: dict[str, Any]) -> dict[str, Any]:
    """The shared starting point: nasforge supernet weights, alpha, batches (all from ``seed``)."""
    import nasforge

    torch.manual_seed(setup["seed"])
    space = nasforge.get_space("nb201")
    net = space.supernet(C=setup["C"], N=setup["N"], affine=False, track_running_stats=False)
    alpha = setup["alpha_scale"] * torch.randn(len(X.EDGES), len(X.NB201_OPS))
    b = setup["batch"]
    train = (torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,)))
    valid = (torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,)))
    return {
        "net": net, "state": {k: v.detach().clone() for k, v in net.state_dict().items()}, "alpha": alpha,
        "train": train, "valid": valid, "C": setup["C"], "N": setup["N"], "tau": setup["tau"], "lr": setup["lr"],
        "noise_seeds": list(setup["noise_seeds"]),
    }


def run_reference(inputs: dict[str, Any], python: Path) -> dict[str, Any]:
    """xautodl's outputs for ``inputs`` (runs ``xautodl_parity.py`` in the peers venv)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save({k: v for k, v in inputs.items() if k != "net"}, src)
        subprocess.run([str(python), str(HERE / "xautodl_parity.py"), str(src), str(dst)], check=True)
        out: dict[str, Any] = torch.load(dst, weights_only=True)
    return out


def make_policy(kind: str, net: Any, inputs: dict[str, Any]) -> Any:
    """The library policy of ``kind`` (``darts | gdas | gdas_ref``) with the shared starting alpha."""
    from nasforge.policies import HardGumbelPolicy, SoftmaxPolicy

    choices = net.choices()
    if kind == "darts":
        policy: Any = SoftmaxPolicy(choices)
    else:
        policy = HardGumbelPolicy(choices, tau=inputs["tau"], reference_gradient=(kind == "gdas_ref"))
    policy.to(inputs["alpha"].dtype)
    with torch.no_grad():
        for i, key in enumerate(X.EDGE_NAMES):
            policy.logits.alphas[key].copy_(inputs["alpha"][i])
    return policy


def nasforge_step(kind: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """nasforge's quantities for ``kind`` in ``darts | gdas | gdas_ref`` (library steps and policies)."""
    from nasforge.train.bilevel import arch_step, weight_step

    net = copy.deepcopy(inputs["net"])
    net.train()
    policy = make_policy(kind, net, inputs)
    seed_w, seed_a, seed_0 = inputs["noise_seeds"]

    def path(seed: int) -> Any:
        if kind == "darts":
            return policy()
        noise = X.gumbel_noise(seed)
        return policy({key: noise[i] for i, key in enumerate(X.EDGE_NAMES)})

    def alpha_grad() -> torch.Tensor:
        return torch.stack([
            policy.logits.alphas[k].grad if policy.logits.alphas[k].grad is not None
            else torch.zeros(len(X.NB201_OPS)) for k in X.EDGE_NAMES
        ])

    def named(what: str) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in net.named_parameters():
            t = p if what == "value" else (p.grad if p.grad is not None else torch.zeros_like(p))
            out[X.xautodl_key(name)] = t.detach().clone()
        return out

    out: dict[str, Any] = {}
    (xt, yt), (xv, yv) = inputs["train"], inputs["valid"]
    logits = net(xv, path(seed_0))
    F.cross_entropy(logits, yv).backward(inputs=list(policy.parameters()))
    out["logits0"], out["alpha_grad0"] = logits.detach(), alpha_grad()
    policy.zero_grad(set_to_none=True)

    w_opt = torch.optim.SGD(net.parameters(), lr=inputs["lr"], momentum=0.9, weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam(policy.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    with torch.no_grad():
        w_path = path(seed_w)
    if kind == "darts":
        w_path = {k: v.detach() for k, v in w_path.items()}
    # the gradients before clipping: the same step on a copy, unclipped, no update kept
    probe = copy.deepcopy(net)
    probe_opt = torch.optim.SGD(probe.parameters(), lr=0.0)
    weight_step(probe, w_path, (xt, yt), probe_opt, loss_fn=F.cross_entropy, grad_clip=None, where="parity")
    out["w_grad"] = {X.xautodl_key(n): (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                     for n, p in probe.named_parameters()}
    weight_step(net, w_path, (xt, yt), w_opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="parity")
    out["weights1"] = named("value")
    arch_step(net, lambda: path(seed_a), (xv, yv), a_opt, loss_fn=F.cross_entropy, where="parity")
    out["alpha_grad1"] = alpha_grad()
    out["alpha1"] = torch.stack([policy.logits.alphas[k].detach().clone() for k in X.EDGE_NAMES])
    return out


def digest(t: torch.Tensor) -> list[float]:
    """A tensor's sum, sum of squares and first 8 values, zero-padded (what the fixture keeps of large tensors)."""
    flat = t.detach().double().reshape(-1)
    head = [float(v) for v in flat[:8]]
    return [float(flat.sum()), float((flat * flat).sum()), *head, *[0.0] * (8 - len(head))]


def to_fixture(ref: dict[str, Any]) -> dict[str, Any]:
    """xautodl's outputs as JSON values: tensors as lists, name -> tensor dicts as name -> digest."""
    out: dict[str, Any] = {}
    for key, value in ref.items():
        if isinstance(value, dict):
            out[key] = {name: digest(t) for name, t in value.items()}
        elif isinstance(value, torch.Tensor):
            out[key] = value.tolist()
        else:
            out[key] = value
    return out


def rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max|b|`` over tensors or name -> tensor dicts (nasforge's names ``a``; xautodl's
    extra conv biases, which batch-statistics BN cancels, are not compared)."""
    if isinstance(b, dict):
        num = max(float((v - b[k]).abs().max()) for k, v in a.items())
        den = max(float(b[k].abs().max()) for k in a)
    else:
        num, den = float((a - b).abs().max()), float(b.abs().max())
    return num / den if den > 0 else num


def float_floor(kind: str, inputs: dict[str, Any], mine: dict[str, Any]) -> dict[str, float]:
    """nasforge's own float32 rounding error per quantity: its float32 run ``mine`` against a float64 run."""
    wide = dict(inputs)
    wide["net"] = copy.deepcopy(inputs["net"]).double()
    wide["alpha"] = inputs["alpha"].double()
    wide["train"] = (inputs["train"][0].double(), inputs["train"][1])
    wide["valid"] = (inputs["valid"][0].double(), inputs["valid"][1])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        exact = nasforge_step(kind, wide)
    finally:
        torch.set_default_dtype(old)

    def narrow(v: Any) -> Any:
        return {k: t.float() for k, t in v.items()} if isinstance(v, dict) else v.float()

    return {q: rel_diff(mine[q], narrow(exact[q])) for q in QUANTITIES}


def compare(inputs: dict[str, Any], ref: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Relative differences per nasforge variant and quantity (against xautodl's DARTS-V1 / GDAS)."""
    table: dict[str, dict[str, float]] = {}
    mine = {kind: nasforge_step(kind, inputs) for kind in ("darts", "gdas", "gdas_ref")}
    for kind, ours in mine.items():
        tag = "darts" if kind == "darts" else "gdas"
        table[kind] = {q: rel_diff(ours[q], ref[f"{tag}_{q}"]) for q in QUANTITIES}
    for kind in ("darts", "gdas_ref"):  # the noise floor: how far float32 itself is from float64
        table[f"{kind}: nasforge float32 vs float64"] = float_floor(kind, inputs, mine[kind])
    return table


def gradient_at_reference_weights(inputs: dict[str, Any], ref: dict[str, Any], perturb: float = 1e-7) -> tuple[float, float]:
    """Float sensitivity of GDAS' architecture gradient after the weight step (reference form).

    Returns ``(vs_reference, self_change)``: nasforge's ``alpha_grad1`` computed at xautodl's own
    updated weights against xautodl's (pure floating-point order), and how much nasforge's
    gradient changes when those weights are multiplied by ``1 + perturb * N(0, 1)``.
    """
    net = copy.deepcopy(inputs["net"])
    net.train()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(ref["gdas_weights1"][X.xautodl_key(name)])
    policy = make_policy("gdas_ref", net, inputs)
    noise = X.gumbel_noise(inputs["noise_seeds"][1])
    x, y = inputs["valid"]

    def grad() -> torch.Tensor:
        loss = F.cross_entropy(net(x, policy({k: noise[i] for i, k in enumerate(X.EDGE_NAMES)})), y)
        gs = dict(zip(policy.logits.alphas.keys(), torch.autograd.grad(loss, list(policy.logits.alphas.values()))))
        return torch.stack([gs[k] for k in X.EDGE_NAMES])

    base = grad()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + perturb * torch.randn(p.shape, generator=gen))
    return rel_diff(base, ref["gdas_alpha_grad1"]), rel_diff(grad(), base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=str(ROOT / "runs" / "peers" / "xautodl" / "bin" / "python"),
                    help="the peers venv's python (bash benchmarks/peers/setup_peers.sh makes it)")
    ap.add_argument("--write-fixture", default=None, help="store the setup and xautodl's outputs here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_parity" / "parity.json"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"change the set-up (keys: {', '.join(SETUP)}), e.g. --set C=16 --set N=5 --set batch=64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    setup = dict(SETUP)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETUP or key == "noise_seeds":
            raise SystemExit(f"--set: unknown or fixed key {key!r}; valid: {', '.join(k for k in SETUP if k != 'noise_seeds')}")
        setup[key] = type(SETUP[key])(value)
    if args.write_fixture and setup != SETUP:
        raise SystemExit("--write-fixture stores the default set-up only (the CI test recomputes it)")
    inputs = make_inputs(setup)
    ref = run_reference(inputs, Path(args.python))
    if args.write_fixture:
        Path(args.write_fixture).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_fixture).write_text(json.dumps({"setup": SETUP, "reference": to_fixture(ref)}) + "\n")
        print(f"wrote {args.write_fixture}")
    table = compare(inputs, ref)
    w = ref["gdas_w_grad"]
    gdas_w_norm = float(torch.sqrt(sum((v * v).sum() for v in w.values())))
    extra = {
        "gdas_clip_total_norm_xautodl": float(ref["gdas_clip_total_norm"]),
        "gdas_weight_grad_norm": gdas_w_norm,
        "gdas_alpha_grad_norm_in_weight_step": float(ref["gdas_w_alpha_grad"].norm()),
        "darts_clip_total_norm_xautodl": float(ref["darts_clip_total_norm"]),
        "darts_alpha_grad_norm_in_weight_step": float(ref["darts_w_alpha_grad"].norm()),
    }
    extra["gdas_ref_alpha_grad1_at_reference_weights"], extra["gdas_ref_alpha_grad1_self_sensitivity_1e-7"] = (
        gradient_at_reference_weights(inputs, ref))
    print("| nasforge variant vs xautodl | " + " | ".join(QUANTITIES) + " |")
    print("|---|" + "---|" * len(QUANTITIES))
    for kind, row in table.items():
        print(f"| {kind} | " + " | ".join(f"{row[q]:.1e}" for q in QUANTITIES) + " |")
    for k, v in extra.items():
        print(f"{k}: {v:.4g}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": setup, "relative_difference": table, **extra,
                               "xautodl": ref.get("xautodl_version"), "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
