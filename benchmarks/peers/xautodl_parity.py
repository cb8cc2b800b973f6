"""The xautodl side of ``nb201_parity.py``: one DARTS-V1 and one GDAS step of xautodl's own NB201 models.

    runs/peers/xautodl/bin/python benchmarks/peers/xautodl_parity.py INPUTS.pt OUTPUTS.pt

Reads the weights (nasforge's, in xautodl names), the architecture parameters, two batches, the
temperature and the noise seeds written by ``nb201_parity.py``; builds xautodl's
``TinyNetworkDarts`` ("DARTS-V1") and ``TinyNetworkGDAS`` ("GDAS") with them and runs the steps of
``exps/NAS-Bench-201-algos/DARTS-V1.py`` / ``GDAS.py`` ``search_func`` (re-typed: the scripts are
not in the pip package): ``w_optimizer.zero_grad()``, forward, CE, backward,
``clip_grad_norm_(network.parameters(), 5)`` (which includes ``arch_parameters``), SGD step; then
``a_optimizer.zero_grad()``, forward on the validation batch, CE, backward, Adam step. Every
xautodl GDAS forward is preceded by ``torch.manual_seed(noise seed)`` so its Gumbel draw can be
replayed on the nasforge side. Writes the tensors both sides compare (``torch.save``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _xautodl_nb201 as X  # noqa: E402


def build(name: str, inp: dict[str, Any]) -> Any:
    from xautodl.models import get_cell_based_tiny_net, get_search_spaces

    space = get_search_spaces("cell", "nas-bench-201")
    if list(space) != list(X.NB201_OPS):
        raise SystemExit(f"unexpected xautodl op order {space}")
    model = get_cell_based_tiny_net({
        "name": name, "C": int(inp["C"]), "N": int(inp["N"]), "max_nodes": 4, "num_classes": 10,
        "space": space, "affine": False, "track_running_stats": False,
    })
    state = X.to_xautodl_state(inp["state"], model.state_dict())
    state["arch_parameters"] = inp["alpha"].clone()
    model.load_state_dict(state)
    model.train()
    return model


def named(model: Any, what: str) -> dict[str, torch.Tensor]:
    """Weights (``what="value"``) or their gradients (``"grad"``, zero when None) by xautodl name."""
    out = {}
    for name, p in model.named_parameters():
        if name == "arch_parameters":
            continue
        t = p if what == "value" else (p.grad if p.grad is not None else torch.zeros_like(p))
        out[name] = t.detach().clone()
    return out


def one_search_step(name: str, inp: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
    model = build(name, inp)
    tag = "darts" if name == "DARTS-V1" else "gdas"
    if name == "GDAS":
        model.set_tau(float(inp["tau"]))
    (xt, yt), (xv, yv) = inp["train"], inp["valid"]
    seed_w, seed_a, seed_0 = (int(s) for s in inp["noise_seeds"])

    def forward(x: torch.Tensor, seed: int) -> torch.Tensor:
        if name == "GDAS":
            torch.manual_seed(seed)
        return model(x)[1]

    # the architecture gradient at the starting weights (no step taken)
    model.zero_grad(set_to_none=True)
    logits = forward(xv, seed_0)
    F.cross_entropy(logits, yv).backward()
    out[f"{tag}_logits0"] = logits.detach()
    out[f"{tag}_alpha_grad0"] = model.arch_parameters.grad.detach().clone()

    weights = model.get_weights()
    w_opt = torch.optim.SGD(weights, lr=float(inp["lr"]), momentum=0.9, weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam(model.get_alphas(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    # weight step (search_func)
    w_opt.zero_grad()
    model.arch_parameters.grad = None
    loss = F.cross_entropy(forward(xt, seed_w), yt)
    loss.backward()
    out[f"{tag}_w_loss"] = loss.detach()
    out[f"{tag}_w_grad"] = named(model, "grad")
    out[f"{tag}_w_alpha_grad"] = model.arch_parameters.grad.detach().clone()
    out[f"{tag}_clip_total_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 5).detach()
    w_opt.step()
    out[f"{tag}_weights1"] = named(model, "value")
    # architecture step
    a_opt.zero_grad()
    loss = F.cross_entropy(forward(xv, seed_a), yv)
    loss.backward()
    out[f"{tag}_a_loss"] = loss.detach()
    out[f"{tag}_alpha_grad1"] = model.arch_parameters.grad.detach().clone()
    a_opt.step()
    out[f"{tag}_alpha1"] = model.arch_parameters.detach().clone()


def main() -> int:
    inp = torch.load(sys.argv[1], weights_only=True)
    torch.set_num_threads(1)
    import xautodl

    out: dict[str, Any] = {}
    for name in ("DARTS-V1", "GDAS"):
        one_search_step(name, inp, out)
    out["xautodl_version"] = str(xautodl.version() if callable(getattr(xautodl, "version", None)) else "?")
    out["torch_version"] = str(torch.__version__)
    torch.save(out, sys.argv[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
