"""The nasforge side of ``nb201_differential.py``: a whole NB201 search with the library's method.

    .venv/bin/python benchmarks/peers/nasforge_search.py --method gdas --data D.pt --seed 0 --epochs 10 \
        --write-init I.pt --out run.json

Runs the registered method (``nasforge.methods.gdas`` / ``darts``) unchanged, through
:class:`~nasforge.train.oneshot.OneShotContext`; only the data feed is replaced: the batches come
from ``_xautodl_nb201.SearchData`` (the same images, order and augmentation as the xautodl side)
instead of the library's loaders. ``--write-init`` stores the supernet's initial weights (the
method's own seeded initialisation) so that the xautodl side starts from them. Method options
are the NB201 protocol's (``benchmarks/nb201_oneshot.py`` ``PROTOCOL_OPTIONS``), plus
``--option key=value`` (e.g. ``reference_gradient=true``). Writes one JSON with a record per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _xautodl_nb201 as X  # noqa: E402
from nb201_oneshot import PROTOCOL_OPTIONS  # noqa: E402

from nasforge import get_space, registry  # noqa: E402
from nasforge.cli import _kv  # noqa: E402
from nasforge.train.oneshot import OneShotContext, SearchRun  # noqa: E402

# the NB201 protocol's options, from the one table the reduced protocol uses
PROTOCOL: dict[str, dict[str, Any]] = {m: dict(PROTOCOL_OPTIONS.get(m, {})) for m in ("darts", "gdas", "rsps")}


class _Run(SearchRun):
    """A SearchRun whose batches are ``SearchData``'s and whose epoch records carry ``softmax(alpha)``."""

    data: X.SearchData

    def _batches(self, batch_size: int, *, with_valid: bool) -> Iterator[Any]:
        if batch_size != self.data.batch_size:
            raise SystemExit(f"method batch size {batch_size} != data batch size {self.data.batch_size}")
        for b, train, valid in self.data.epoch(self.epoch):
            if b >= self.batch:
                yield b, train, valid if with_valid else None

    def epoch_done(self, **record: Any) -> dict[str, Any]:
        policy = self.state["policy"]
        if not hasattr(policy, "logits"):  # rsps: uniform sampling, no architecture parameters
            return super().epoch_done(**record, probs=None, entropy=None)
        probs = torch.stack([policy.strengths()[k] for k in X.EDGE_NAMES])
        return super().epoch_done(**record, probs=probs.tolist(), entropy=X.entropy(probs))


class _Context(OneShotContext):
    data: X.SearchData
    init_path: str | None = None

    def supernet(self, **overrides: Any) -> Any:
        net = super().supernet(**overrides)
        if self.init_path:
            torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, self.init_path)
        return net

    def open_run(self, method: str, config: Any, **state: Any) -> SearchRun:
        run = super().open_run(method, config, **state)
        run.__class__ = _Run
        run.data = self.data  # type: ignore[attr-defined]
        return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=sorted(PROTOCOL))
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--N", type=int, default=1)
    ap.add_argument("--write-init", default=None)
    ap.add_argument("--option", action="append", default=[], type=_kv,
                    help="extra method option key=value (the value read as YAML, as nasforge --method-opt)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)
    data = X.SearchData(args.data, args.seed, args.batch_size)
    options: dict[str, Any] = {"epochs": args.epochs, "batch_size": args.batch_size, **PROTOCOL[args.method]}
    options.update(dict(args.option))
    ctx = _Context(
        space=get_space("nb201"), train_set=TensorDataset(data.train_x, data.train_y),
        valid_set=TensorDataset(data.valid_x, data.valid_y), num_classes=10, input_shape=(3, 32, 32),
        supernet_kwargs={"C": args.C, "N": args.N, "affine": False, "track_running_stats": False},
        seed=args.seed, run_dir=None, augment=False,
        log=lambda s: print(f"[nasforge {args.method} seed {args.seed}] {s}", flush=True),
    )
    ctx.data, ctx.init_path = data, args.write_init
    t0 = time.perf_counter()
    res = registry.get("method", args.method)(ctx, **options)
    history = []
    for rec in res.history:
        history.append({
            "epoch": rec["epoch"], "train_loss": rec.get("train_loss"), "train_acc": rec.get("train_acc"),
            "valid_loss": rec.get("valid_loss"), "valid_acc": rec.get("valid_acc"), "tau": rec.get("tau"),
            "lr": rec.get("lr"), "probs": rec["probs"], "entropy": rec["entropy"], "arch": rec.get("arch"),
            "seconds": rec.get("seconds"),
        })
    if history[-1]["arch"] is None:  # rsps selects once, after training
        history[-1]["arch"] = ctx.space.format(res.arch)
    Path(args.out).write_text(json.dumps({
        "impl": "nasforge", "method": args.method, "seed": args.seed, "options": options, "history": history,
        "arch": ctx.space.format(res.arch), "seconds": time.perf_counter() - t0,
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
