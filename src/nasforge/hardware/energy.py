"""Energy of a network: an analytic operation + memory-traffic model, and ChamNet's GP energy predictor.

ChamNet (Dai et al., "ChamNet: Towards Efficient Network Design through Platform-Aware Model
Adaptation", CVPR 2019, arXiv:1812.08934; no official code) predicts a network's energy with a
Gaussian-process regressor fitted on (architecture vector -> energy measured on the device with
a power meter). This machine has no energy counters, so two models are offered:

* **analytic** (:func:`network_energy`, :class:`EnergyTable`): per layer, the energy of its
  arithmetic and of its memory traffic, with the 45 nm per-operation energies of Horowitz,
  "Computing's energy problem (and what we can do about it)", ISSCC 2014
  (:data:`HOROWITZ_45NM`, see :class:`EnergyCosts` for each value's source)::

      E_layer = MACs * (E_mult + E_add)                      # fp32 multiply-accumulates
              + weight_words * E_dram                         # every weight read once from DRAM
              + (read_words + written_words) * E_sram         # activations through on-chip SRAM

  A *layer* is a leaf module that runs in a batch-1 forward pass (eval mode), seen with forward
  hooks: MACs are counted for convolutions (``output elements * in_channels / groups * kernel
  area``) and linear layers (``output elements * in_features``), 0 for element-wise layers (BN,
  activations, pooling), as :class:`torch.utils.flop_counter.FlopCounterMode` counts nothing
  for those; ``weight_words`` are the module's own parameters and floating-point buffers (an
  unfused BN reads its 4 vectors); ``read_words`` the elements of its tensor inputs and
  ``written_words`` of its outputs (32-bit words; bytes are 4 x words). Identity, flatten and
  dropout modules move nothing and are not layers. Energies are in picojoules per operation and
  reported in millijoules (``*_mj``). :class:`EnergyTable` is the same model for the
  ``mobilenet`` space as a lookup table (the sum of the chosen blocks' energies plus a constant
  for the fixed stem / first block / head): additive and exact, so a genetic algorithm can
  query thousands of architectures without building them.

* **GP predictor** (:func:`fit_energy_predictor`): ChamNet's form, a GP regressor
  (:func:`nasforge.searchers._surrogates.fit_gp`: ``Constant * Matern(2.5) + White``,
  normalised targets, marginal-likelihood hyper-parameters) from the one-hot architecture
  encoding to energy in mJ, fitted on energies a user measured (:func:`load_measured_energies`
  reads them from a JSON file ``{architecture text: mJ}``).

Deviations and limits, stated explicitly:

* the analytic model is not ChamNet's (ChamNet measures); it ignores the energy of functional
  operations that are not modules (the residual addition of an MBConv, the squeeze-and-excite
  mean and product, ``flatten``), of element-wise arithmetic (BN, activations, pooling), of
  instruction fetch, control and leakage, and any reuse of weights or activations in caches:
  it ranks architectures by arithmetic and traffic, it does not predict a device's joules;
* ChamNet's energy GP is built with the same Bayesian-optimisation sampling as its accuracy
  predictor; here it is fitted on whatever measurements are given, and its vector is the
  one-hot encoding of the space's decisions (ChamNet uses the numeric block hyper-parameters).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError

#: Leaf modules that move no data (aliases or no-ops at inference): not layers of the model.
NO_TRAFFIC: tuple[type[nn.Module], ...] = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d,
                                            nn.Dropout1d, nn.Dropout3d, nn.AlphaDropout)
#: Bytes of one 32-bit word (fp32 weights and activations).
WORD_BYTES = 4
#: picojoules -> millijoules
PJ_TO_MJ = 1e-9


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per operation and per 32-bit memory access, in picojoules."""

    fp32_add_pj: float = 0.9  # 32-bit float add, 45 nm 0.9 V (Horowitz, ISSCC 2014, energy table)
    fp32_mult_pj: float = 3.7  # 32-bit float multiply, 45 nm 0.9 V (Horowitz, ISSCC 2014, energy table)
    sram_word_pj: float = 5.0  # 32-bit SRAM read: half of Horowitz's 10 pJ per 64-bit access of an 8 KB cache (as Han et al., NIPS 2015, Table 1, quote it)
    dram_word_pj: float = 640.0  # 32-bit DRAM read (Han et al., NIPS 2015, Table 1, from Horowitz; his table gives 1.3-2.6 nJ per 64-bit access: not checked against the ISSCC text)

    def __post_init__(self) -> None:
        for name in ("fp32_add_pj", "fp32_mult_pj", "sram_word_pj", "dram_word_pj"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"energy cost {name} must be a finite number >= 0 (pJ), got {value!r}")

    @property
    def mac_pj(self) -> float:
        """One multiply-accumulate: a multiply and an add."""
        return self.fp32_mult_pj + self.fp32_add_pj


#: The default costs: Horowitz's 45 nm figures.
HOROWITZ_45NM = EnergyCosts()


@dataclass(frozen=True)
class LayerCount:
    """What one layer computes and moves in a batch-1 forward pass (see the module docstring)."""

    name: str  # module name in the network
    kind: str  # module class name
    macs: int  # multiply-accumulates
    weight_words: int  # 32-bit words of parameters and floating buffers, read once from DRAM
    read_words: int  # activation words read (tensor inputs)
    written_words: int  # activation words written (outputs)

    def energy_pj(self, costs: EnergyCosts = HOROWITZ_45NM) -> float:
        return (self.macs * costs.mac_pj + self.weight_words * costs.dram_word_pj
                + (self.read_words + self.written_words) * costs.sram_word_pj)

    def energy_mj(self, costs: EnergyCosts = HOROWITZ_45NM) -> float:
        return self.energy_pj(costs) * PJ_TO_MJ


@dataclass(frozen=True)
class EnergyReport:
    """Per-layer counts of one network and their energy under ``costs``."""

    layers: tuple[LayerCount, ...]
    costs: EnergyCosts = HOROWITZ_45NM

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_bytes(self) -> int:
        return WORD_BYTES * sum(layer.weight_words for layer in self.layers)

    @property
    def activation_bytes_read(self) -> int:
        return WORD_BYTES * sum(layer.read_words for layer in self.layers)

    @property
    def activation_bytes_written(self) -> int:
        return WORD_BYTES * sum(layer.written_words for layer in self.layers)

    @property
    def compute_mj(self) -> float:
        return self.macs * self.costs.mac_pj * PJ_TO_MJ

    @property
    def memory_mj(self) -> float:
        words_sram = sum(layer.read_words + layer.written_words for layer in self.layers)
        words_dram = sum(layer.weight_words for layer in self.layers)
        return (words_sram * self.costs.sram_word_pj + words_dram * self.costs.dram_word_pj) * PJ_TO_MJ

    @property
    def total_mj(self) -> float:
        return sum(layer.energy_pj(self.costs) for layer in self.layers) * PJ_TO_MJ

    def as_dict(self) -> dict[str, float]:
        return {"energy_mj": self.total_mj, "compute_mj": self.compute_mj, "memory_mj": self.memory_mj,
                "macs": float(self.macs), "weight_bytes": float(self.weight_bytes),
                "activation_bytes_read": float(self.activation_bytes_read),
                "activation_bytes_written": float(self.activation_bytes_written)}


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, _ConvNd):
        kernel = math.prod(int(k) for k in module.kernel_size)
        return int(output.numel()) * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return int(output.numel()) * module.in_features
    return 0


def _own_words(module: nn.Module) -> int:
    params = sum(p.numel() for p in module.parameters(recurse=False))
    buffers = sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    return int(params + buffers)


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(f"input_shape must be positive ints, e.g. (3, 32, 32), got {shape!r}")
    return shape


@torch.no_grad()
def layer_counts(net: nn.Module, input_shape: Sequence[int]) -> list[LayerCount]:
    """The :class:`LayerCount` of every leaf module that runs on one zero input of ``input_shape``
    (``(C, H, W)``, batch 1), in execution order; a module that runs twice counts twice."""
    shape = check_input_shape(input_shape)
    names = {id(m): name for name, m in net.named_modules()}
    counts: list[LayerCount] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        outs = _tensors(output)
        counts.append(LayerCount(
            name=names.get(id(module), ""), kind=type(module).__name__,
            macs=_macs(module, outs[0]) if outs else 0, weight_words=_own_words(module),
            read_words=sum(int(t.numel()) for t in _tensors(inputs)), written_words=sum(int(t.numel()) for t in outs),
        ))

    leaves = [m for m in net.modules() if not any(True for _ in m.children()) and not isinstance(m, NO_TRAFFIC)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = net.training
    try:
        net.eval()
        p = next(net.parameters(), None)
        net(torch.zeros((1, *shape), device=p.device if p is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return counts


def network_energy(net: nn.Module, input_shape: Sequence[int], costs: EnergyCosts = HOROWITZ_45NM) -> EnergyReport:
    """The analytic energy of one batch-1 inference of ``net`` (module docstring)."""
    return EnergyReport(tuple(layer_counts(net, input_shape)), costs)


# ---- the mobilenet space as an energy lookup table -------------------------------------------------


class EnergyTable:
    """The analytic model of a ``mobilenet`` space as a table: one energy (mJ) per (layer, option)
    plus a constant for the fixed parts; ``predict(arch)`` is their sum (equal to
    :func:`network_energy` of ``space.build(arch)`` up to float rounding).

    Build with :meth:`build`; ``block_mj[layer][option]`` holds the entries.
    """

    def __init__(self, space: Any, block_mj: Mapping[str, Mapping[str, float]], constant_mj: float,
                 costs: EnergyCosts = HOROWITZ_45NM) -> None:
        self.space, self.costs = space, costs
        self.block_mj = {layer: dict(options) for layer, options in block_mj.items()}
        self.constant_mj = float(constant_mj)

    @classmethod
    def build(cls, space: Any, input_shape: Sequence[int], num_classes: int,
              costs: EnergyCosts = HOROWITZ_45NM) -> EnergyTable:
        """Count every distinct block of ``space`` at ``input_shape`` once, and one whole network for the constant."""
        from nasforge.hardware.lut import block_module, layer_keys

        shape = check_input_shape(input_shape)
        keys = layer_keys(space, shape)  # a ConfigError for spaces without a block backbone
        by_text: dict[str, float] = {}
        block_mj: dict[str, dict[str, float]] = {}
        for layer, options in keys.items():
            block_mj[layer] = {}
            for option, key in options.items():
                if key.text not in by_text:
                    block = block_module(space, key)
                    by_text[key.text] = network_energy(block, (key.in_channels, key.height, key.width), costs).total_mj
                block_mj[layer][option] = by_text[key.text]
        decisions = space.decisions()
        probe = space.make({d: opts[0] for d, opts in decisions.items()})
        whole = network_energy(space.build(probe, num_classes=num_classes, in_channels=shape[0]), shape, costs).total_mj
        constant = whole - sum(block_mj[d][probe[d]] for d in decisions)
        return cls(space, block_mj, constant, costs)

    def predict(self, arch: Arch) -> float:
        """Energy of ``arch`` in mJ."""
        try:
            return self.constant_mj + sum(self.block_mj[d][o] for d, o in arch.choices)
        except KeyError as e:
            raise ArchError(f"{arch} is not an architecture of this energy table's space ({e})") from None

    def predict_many(self, archs: Sequence[Arch]) -> np.ndarray:
        """Energies (mJ) of ``archs``."""
        return np.asarray([self.predict(a) for a in archs], dtype=np.float64)

    def least_energy(self) -> tuple[Arch, float]:
        """The architecture of least energy (per layer the cheapest option; first on ties) and its energy."""
        pick = {layer: min(options, key=lambda o: options[o]) for layer, options in self.block_mj.items()}
        arch = self.space.make(pick)
        return arch, self.predict(arch)


# ---- ChamNet's GP energy predictor -----------------------------------------------------------------


class EnergyPredictor:
    """A fitted GP from an architecture's one-hot encoding to energy (mJ); see :func:`fit_energy_predictor`."""

    def __init__(self, space: Any, gp: Any, archs: Sequence[Arch], energies_mj: Sequence[float]) -> None:
        self.space, self.gp = space, gp
        self.archs, self.energies_mj = list(archs), [float(e) for e in energies_mj]

    def _encode(self, archs: Iterable[Arch]) -> np.ndarray:
        return np.asarray([self.space.encode_onehot(a) for a in archs], dtype=np.float64)

    def predict_many(self, archs: Sequence[Arch], *, return_std: bool = False) -> Any:
        """Posterior mean energies (mJ) of ``archs`` (and their standard deviations if ``return_std``)."""
        if not archs:
            empty = np.zeros(0)
            return (empty, empty) if return_std else empty
        return self.gp.predict(self._encode(archs), return_std=return_std)

    def predict(self, arch: Arch) -> float:
        """Posterior mean energy (mJ) of ``arch``."""
        return float(self.predict_many([arch])[0])


def fit_energy_predictor(
    space: Any, measured_mj: Mapping[Arch, float] | Mapping[str, float], *, seed: int = 0,
) -> EnergyPredictor:
    """ChamNet's energy predictor: a GP fitted on measured energies ``{architecture (or its text): mJ}``.

    Every architecture must belong to ``space`` (:class:`ArchError`) and every energy be a finite
    number > 0 (:class:`ConfigError` naming it); at least 2 distinct architectures are needed.
    """
    from nasforge.searchers._surrogates import fit_gp, single_threaded_blas

    archs: list[Arch] = []
    values: list[float] = []
    for key, value in measured_mj.items():
        arch = space.parse(key) if isinstance(key, str) else space.validate(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"measured energy of {space.format(arch)} must be a finite number > 0 (mJ), got {value!r}")
        archs.append(arch)
        values.append(float(value))
    if len(set(archs)) < 2:
        raise ConfigError(f"an energy predictor needs measurements of at least 2 distinct architectures, got {len(set(archs))}")
    x = np.asarray([space.encode_onehot(a) for a in archs], dtype=np.float64)
    with single_threaded_blas():
        gp = fit_gp(x, np.asarray(values), random_state=seed)
    return EnergyPredictor(space, gp, archs, values)


def load_measured_energies(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{architecture text: mJ}`` from a JSON file (an object, or ``{"energies_mj": {...}}``)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"energy measurements file {p} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read energy measurements {p}: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("energies_mj"), dict):
        doc = doc["energies_mj"]
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise ConfigError(f"energy measurements {p} must be a JSON object {{architecture text: mJ}}")
    return dict(doc)
