"""Parameter and multiply-add counts of published networks, next to the papers' figures.

    .venv/bin/python benchmarks/reference_counts.py

Counts come from ``nasforge.hardware.cost`` (``torch.utils.flop_counter``; MACs = FLOPs / 2);
auxiliary heads are excluded, as the papers do.
"""

from __future__ import annotations

import time

import torch

from nasforge import get_space
from nasforge.hardware.cost import measure
from nasforge.spaces.darts import GENOTYPES
from nasforge.spaces.mobilenet import PROXYLESSNAS_MOBILE

PAPER = {  # params (M) as published
    "DARTS_V1": "3.3 (DARTS, Table 1)", "DARTS_V2": "3.3 (DARTS, Table 1)", "PDARTS": "3.4 (P-DARTS, Table 1)",
    "PC_DARTS": "3.6 (PC-DARTS, Table 1)", "PC_DARTS_IMAGENET": "-",
}


def main() -> None:
    torch.manual_seed(0)
    rows = []
    darts = get_space("darts")
    for name, text in GENOTYPES.items():
        net = darts.build(darts.parse(text), C=36, layers=20, auxiliary=True)
        cost = measure(net, (3, 32, 32))
        rows.append((f"darts {name} C=36 L=20, CIFAR 32x32", cost.params, cost.macs, PAPER[name]))
    sup = darts.supernet(C=16, layers=8)
    rows.append(("darts search supernet C=16 L=8", sum(p.numel() for p in sup.parameters()), None, "1.93 (DARTS search log)"))
    mb = get_space("mobilenet")
    for label, arch, paper in (
        ("mobilenet PROXYLESSNAS_MOBILE (24-ch stage 1)", mb.make(PROXYLESSNAS_MOBILE),
         "4.1, 320M MACs (32-ch stage 1)"),
        ("mobilenet all ir_k3_e3", mb.make({d: "ir_k3_e3" for d in mb.decisions()}), "-"),
        ("mobilenet all ir_k7_e6", mb.make({d: "ir_k7_e6" for d in mb.decisions()}), "-"),
    ):
        cost = measure(mb.build(arch, num_classes=1000), (3, 224, 224))
        rows.append((f"{label}, ImageNet 224", cost.params, cost.macs, paper))
    nb = get_space("nb201")
    best = nb.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    cost = measure(nb.build(best), (3, 32, 32))
    rows.append(("nb201 best cell (index 6111) C=16 N=5", cost.params, cost.macs, "1.073466 (table params_mb)"))

    print(f"{'network':58s} {'params':>12s} {'MACs':>14s}  paper params (M)")
    for label, params, macs, paper in rows:
        m = f"{macs:,}" if macs is not None else "-"
        print(f"{label:58s} {params:>12,} {m:>14s}  {paper}")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - t:.1f} s)")
