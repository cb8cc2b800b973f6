"""SNAS: how large is the resource penalty's architecture gradient next to the loss's?

    .venv/bin/python benchmarks/snas_penalty_scale.py            # NB201 supernet, C=8 N=1 and C=16 N=5

For each supernet and penalty form, over ``--batches`` CIFAR-10 training batches of 64 (from the
data kit; the first images of the 25k/25k split's training half) at the start of a search
(fresh weights, ``alpha ~ 1e-2 N(0, 1)``, tau 1), one soft Gumbel sample per batch as SNAS
draws it, and the norms of ``grad_alpha CE`` and ``grad_alpha eta * R`` (``R`` as
``nasforge.methods.snas.resource_terms`` builds it). Also the sign check: the mean penalty
gradient of each candidate, which must be positive (descent lowers the logit) for the costly
convolutions and negative for the parameter-free ops. Forms: the reference README's
(``resource_form="log"``, reparametrised, eta 1.5e-3, parameters) and the linear form of the
paper's E[C(Z)] (policy gradient, parameters in millions) at the same eta.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

FORMS = {  # name -> (resource_form, estimator)
    "log, reparametrization (reference README)": ("log", "reparametrization"),
    "linear, policy gradient (paper eq.)": ("linear", "policy_gradient"),
}


def images(kit: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` CIFAR-10 training images, normalised as the search normalises them."""
    import _xautodl_nb201 as X
    import nb201_differential as D

    path = ROOT / "runs" / "differential" / "cifar10_5000.pt"
    D.prepare_data(kit, 5000, path)
    data = X.SearchData(str(path), 0, 64)
    return data.train_x[:n], data.train_y[:n]


def measure(C: int, N: int, x: torch.Tensor, y: torch.Tensor, eta: float, batches: int) -> dict[str, object]:
    import nasforge
    from nasforge.methods.snas import candidate_costs, resource_terms
    from nasforge.policies import GumbelPolicy

    torch.manual_seed(0)
    net = nasforge.get_space("nb201").supernet(C=C, N=N, affine=False, track_running_stats=False)
    policy = GumbelPolicy(net.choices(), tau=1.0, init_scale=1e-2)
    costs = candidate_costs(net, (3, 32, 32), "params")
    alphas = list(policy.parameters())
    out: dict[str, object] = {"C": C, "N": N, "eta": eta}
    ce_norms = []
    pen = {name: [] for name in FORMS}
    mean_grad = {name: torch.zeros(5) for name in FORMS}
    for b in range(batches):
        xb, yb = x[b * 64:(b + 1) * 64], y[b * 64:(b + 1) * 64]
        path = policy()
        ce = F.cross_entropy(net(xb, path), yb)
        g_ce = torch.autograd.grad(ce, alphas, retain_graph=True)
        ce_norms.append(float(torch.sqrt(sum((g * g).sum() for g in g_ce))))
        for name, (form, estimator) in FORMS.items():
            r, _ = resource_terms(policy, path, costs, estimator, form)
            g = torch.autograd.grad(eta * r, alphas, retain_graph=True, allow_unused=True)
            g = [torch.zeros_like(a) if gi is None else gi for gi, a in zip(g, alphas)]
            pen[name].append(float(torch.sqrt(sum((gi * gi).sum() for gi in g))))
            mean_grad[name] += torch.stack(g).mean(0) / batches
    out["ce_grad_norm"] = statistics.median(ce_norms)
    out["forms"] = {
        name: {"penalty_grad_norm": statistics.median(v), "ratio": statistics.median(v) / statistics.median(ce_norms),
               "mean_grad_per_op": dict(zip(("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"),
                                            [float(t) for t in mean_grad[name]]))}
        for name, v in pen.items()
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--eta", type=float, default=1.5e-3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_snas" / "penalty_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = images(Path(args.kit), 64 * args.batches)
    rows = [measure(C, N, x, y, args.eta, args.batches) for C, N in ((8, 1), (16, 5))]
    print(f"eta = {args.eta}; medians over {args.batches} batches of 64 at the start of a search (tau 1)")
    print("| supernet | penalty form | |grad CE| | |grad eta R| | ratio | mean grad: none, skip, conv1x1, conv3x3, pool |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for name, f in row["forms"].items():  # type: ignore[union-attr]
            g = ", ".join(f"{v:+.2e}" for v in f["mean_grad_per_op"].values())
            print(f"| C={row['C']}, N={row['N']} | {name} | {row['ce_grad_norm']:.2e} | {f['penalty_grad_norm']:.2e} "
                  f"| {f['ratio']:.2f} | {g} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
