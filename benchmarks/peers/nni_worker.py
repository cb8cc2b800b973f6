"""NNI 3.0 one-shot NAS on its NAS-Bench-201 space: one search step of DARTS / GumbelDARTS / RandomOneShot, and a fixed net.

    runs/peers/nni/bin/python benchmarks/peers/nni_worker.py --method darts --steps 10 --warmup 2 [--lightning]

NNI's code (imported from its venv, nothing copied): the model space
``nni.nas.hub.pytorch.NasBench201`` (C=16, N=5, 10 labels; every cell has the label "cell", so its
6 ``LayerChoice`` s are shared by all 15 cells), the strategies' supernet conversion
``strategy.mutate_model(space)`` (mutation hooks), the mixed ops it installs, and the one-shot
Lightning module's ``resample()`` / ``arch_parameters()`` / ``configure_architecture_optimizers()``
/ ``postprocess_weight_optimizers()``:

- darts: ``nni.nas.strategy.DARTS`` -> every edge becomes a ``DifferentiableMixedLayer``
  (nni/nas/oneshot/pytorch/supermodule/differentiable.py): forward runs ALL 5 candidates and
  returns ``weighted_sum(outputs, softmax(alpha))`` (a python loop ``res = res + it * w``).
- gdas: ``nni.nas.strategy.GumbelDARTS(temperature=10.0)``, the closest NNI 3.0 has to GDAS: the
  same ``DifferentiableMixedLayer`` with ``softmax=GumbelSoftmax`` (``F.gumbel_softmax``, tau=10,
  ``hard=False`` as NNI sets it). So NNI runs ALL 5 ops of every edge (soft weights, no
  single-path forward), and each of the 90 mixed layers draws its own Gumbel noise even though the
  alpha is shared. This is NNI's GumbelDARTS cost, not a GDAS single-path cost.
- spos: ``nni.nas.strategy.RandomOneShot`` -> ``PathSamplingLayer`` per edge; ``resample()`` draws
  one op per label uniformly (shared by the cells through the memo) and forward runs that op only.
  One weight step per step (no arch step).
- fixed: ``NasBench201(...).freeze(sample)`` of ``_protocol.fixed_arch(seed)``: NNI's stand-alone
  network; fwd + bwd + SGD.

The loop is driven by hand (default): this reproduces, in order, what
``DartsLightningModule.training_step`` / ``GumbelDartsLightningModule.training_step`` do
(``resample``; arch ``zero_grad``; forward valid batch; CE; backward; arch Adam step; ``resample``;
weight ``zero_grad``; forward train batch; CE; backward; no clipping (NNI's default
``gradient_clip_val=None``); SGD step) and what ``RandomSamplingLightningModule`` does under
Lightning automatic optimisation (``resample``; zero_grad; forward; CE; backward; step), without a
Lightning ``Trainer``, logging or torchmetrics accuracy. The CE loss is computed here
(``F.cross_entropy``, what NNI's ``ClassificationModule`` uses) instead of calling
``ClassificationModule.training_step``, which would also update a torchmetrics Accuracy and call
``self.log``. With ``--lightning`` the same one-shot module is instead run by a real
``pytorch_lightning.Trainer`` (``fit`` on random-tensor loaders, logger, checkpoints and progress
bar off) and each step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` by a
callback: NNI's own ``training_step`` including Lightning's per-step machinery and NNI's metric
logging.

Settings changed on NNI's objects, to match the other workers: the BatchNorms inside the
``NasBench201Cell`` candidates are replaced by ``BatchNorm2d(affine=False, track_running_stats=False)``
(NNI's space has affine BN with running stats; xautodl's NB201 search uses non-affine BN without
them); the weight optimizer is SGD(0.025, momentum 0.9, wd 5e-4, nesterov) instead of
``Classification``'s default Adam. The "fixed" network keeps NNI's BN.

Import note: NNI 3.0 prints RuntimeWarnings at import with torch 2.13 (``torch.nn.Buffer`` and
another new class "is found to be not a nn.Module"); they are silenced here and do not affect
the modules used. Nothing here imports torchvision and none is installed.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

IMPL = "nni"
NNI_OPS = {"none": "none", "skip_connect": "skip_connect", "nor_conv_1x1": "conv_1x1",
           "nor_conv_3x3": "conv_3x3", "avg_pool_3x3": "avg_pool_3x3"}


def _swap_cell_bn(space: nn.Module, cell_cls: type) -> int:
    """Replace every BatchNorm2d inside the NB201 search cells by a non-affine one without running stats."""
    n = 0
    for cell in space.modules():
        if not isinstance(cell, cell_cls):
            continue
        for parent in cell.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(parent, name, nn.BatchNorm2d(child.num_features, affine=False, track_running_stats=False))
                    n += 1
    return n


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=P.W_LR, momentum=P.W_MOMENTUM, weight_decay=P.W_DECAY, nesterov=P.W_NESTEROV)


def main() -> None:
    ap_args = sys.argv[1:]
    lightning = "--lightning" in ap_args
    if lightning:
        ap_args.remove("--lightning")
    args = P.parse_args(ap_args)
    if args.method not in P.METHODS:
        P.emit_error(f"unknown method {args.method!r}")
        return
    P.setup_torch(args.seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nni
        from nni.nas.evaluator.pytorch.lightning import ClassificationModule
        from nni.nas.hub.pytorch import NasBench201
        from nni.nas.hub.pytorch.modules.nasbench201 import NasBench201Cell
        from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax
        from nni.nas.strategy import DARTS, GumbelDARTS, RandomOneShot

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    (xt, yt), (xv, yv) = P.make_batches(args.channels_last)
    version = f"nni {nni.__version__}"

    if args.method == "fixed":
        if lightning:
            P.emit_error("--lightning is only for the one-shot methods")
            return
        ops = P.fixed_arch(args.seed)
        space = NasBench201(P.C, P.N_CELLS, P.NUM_CLASSES)
        sample = {f"cell/{j}_{i}": NNI_OPS[op] for (j, i), op in zip(P.edges(), ops)}
        net = space.freeze(sample).to(memory_format=fmt)
        opt = _sgd(net.parameters())
        net.train()

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(net(xt), yt).backward()
            opt.step()

        notes = f"{version} NasBench201.freeze({P.arch_str(ops)}); fwd+bwd+SGD"
        rss0 = round(P.peak_rss_mb(), 1)
        times = P.time_steps(step, args.steps, args.warmup)
        P.emit(IMPL, args.method, times, notes, setup_rss_mb=rss0, channels_last=args.channels_last)
        return

    space = NasBench201(P.C, P.N_CELLS, P.NUM_CLASSES)
    n_bn = _swap_cell_bn(space, NasBench201Cell)
    strategy: Any
    if args.method == "darts":
        strategy = DARTS(arc_learning_rate=P.A_LR)
    elif args.method == "gdas":
        strategy = GumbelDARTS(temperature=P.GDAS_TAU, arc_learning_rate=P.A_LR)
    else:
        strategy = RandomOneShot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        supernet = strategy.mutate_model(space)
    supernet = supernet.to(memory_format=fmt)
    training_module = ClassificationModule(num_classes=P.NUM_CLASSES, learning_rate=P.W_LR,
                                           weight_decay=P.W_DECAY, optimizer=torch.optim.SGD)
    training_module.set_model(supernet)
    oneshot = strategy.configure_oneshot_module(training_module)
    mixed = sorted({type(m).__name__ for m in oneshot.supernet_modules()})

    if args.method == "gdas":  # what GumbelDartsLightningModule.on_train_epoch_start does (fixed schedule)
        for m in oneshot.modules():
            if isinstance(m, GumbelSoftmax):
                m.tau = P.GDAS_TAU
    base = f"{version} {type(strategy).__name__} -> {'/'.join(mixed)}; cell BN swapped to affine=False ({n_bn})"

    if lightning:
        times, extra = _run_lightning(oneshot, training_module, args, (xt, yt), (xv, yv))
        P.emit(IMPL, args.method, times, base + "; timed inside pytorch_lightning.Trainer.fit (" + extra + ")",
               channels_last=args.channels_last, lightning=True)
        return

    supernet.train()
    if args.method == "spos":
        w_opt = _sgd(supernet.parameters())

        def step() -> None:
            oneshot.resample()
            w_opt.zero_grad()
            F.cross_entropy(supernet(xt), yt).backward()
            w_opt.step()

        notes = base + "; hand loop: resample + weight step (no clip)"
    else:
        a_opt = oneshot.configure_architecture_optimizers()  # NNI's Adam(lr, betas=(0.5, 0.999), wd=1e-3)
        w_opt = oneshot.postprocess_weight_optimizers(_sgd(supernet.parameters()))  # drops the alphas

        def step() -> None:
            # phase 1, architecture step (DartsLightningModule.training_step)
            oneshot.resample()
            a_opt.zero_grad()
            F.cross_entropy(supernet(xv), yv).backward()
            a_opt.step()
            # phase 2, model step (advance_optimization: zero_grad, backward, [no clip], step)
            oneshot.resample()
            w_opt.zero_grad()
            F.cross_entropy(supernet(xt), yt).backward()
            w_opt.step()

        n_alpha = sum(p.numel() for p in oneshot.arch_parameters())
        notes = base + f"; hand loop: arch step ({n_alpha} alphas) + weight step (no clip)"

    rss0 = round(P.peak_rss_mb(), 1)
    times = P.time_steps(step, args.steps, args.warmup)
    P.emit(IMPL, args.method, times, notes, setup_rss_mb=rss0, channels_last=args.channels_last)


def _run_lightning(oneshot: Any, training_module: Any, args: Any, train: tuple[torch.Tensor, torch.Tensor],
                   valid: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[float], str]:
    """Run NNI's one-shot module under a real Lightning Trainer; per-step times from a callback."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    total = args.warmup + args.steps
    times: list[float] = []

    class StepTimer(pl.Callback):
        t0 = 0.0

        def on_train_batch_start(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    def loader(xy: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
        x, y = xy
        # the same batch repeated: one "epoch" of ``total`` batches, no shuffling, no workers
        ds = TensorDataset(x.repeat(total, 1, 1, 1), y.repeat(total))
        return DataLoader(ds, batch_size=P.BATCH, shuffle=False)

    # The weight optimiser comes from ClassificationModule.configure_optimizers (SGD(lr, weight_decay));
    # give it the same momentum / nesterov as the other workers.
    training_module.configure_optimizers = lambda: _sgd(training_module.parameters())
    data: Any = {"train": loader(train), "val": loader(valid)} if args.method != "spos" else loader(train)
    # Lightning counts optimizer steps: DARTS/GumbelDARTS step two optimizers per batch.
    max_steps = total if args.method == "spos" else 2 * total
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[StepTimer()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(oneshot, train_dataloaders=data)
    return times[args.warmup:], f"{len(times)} batches, first {args.warmup} dropped"


if __name__ == "__main__":
    main()
