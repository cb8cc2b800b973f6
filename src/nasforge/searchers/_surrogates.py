"""Surrogate models of model-based searchers: an ensemble of feed-forward nets and a GP.

* :class:`MLPEnsemble`: BANANAS's predictor (White, Neiswanger & Savani, AAAI 2021; reference
  ``naszilla/bananas/meta_neural_net.py``): ``members`` independently initialised fully
  connected ReLU nets of ``layers`` hidden layers of ``width`` units and a linear output,
  trained with Adam (``beta1=0.9, beta2=0.99``, ``epsilon=1e-7``: the reference's Keras
  optimizer settings) on the mean absolute error, in mini-batches reshuffled every epoch (the
  last batch of an epoch may be smaller, as in Keras). Weights use Keras's default
  Glorot-uniform initialisation, biases start at zero. Targets are standardised (mean 0,
  std 1) for training and predictions are mapped back.

  The members are trained *at once* as one stacked network (weights ``[members, fan_in,
  fan_out]``): each member still has its own initialisation, its own mini-batch order and
  its own Adam moments (Adam is element-wise), so this equals training them one after the
  other. It is written in numpy with explicit back-propagation rather than torch: on a small
  loaded CPU, torch's batched matmul (``bmm``) dispatches to OpenMP threads and took about
  5-15 ms per call here, numpy's ``matmul`` on the same shapes a few microseconds, and these
  nets are tiny (10 x 20 units). Randomness comes from a ``numpy.random.Generator`` that the
  caller seeds from its searcher's ``rng`` (no global RNG is touched).
* :func:`fit_gp`: a scikit-learn ``GaussianProcessRegressor`` with a ``Constant * Matern(nu=2.5)
  + White`` kernel whose hyper-parameters are fitted by maximising the log marginal likelihood
  (the GP predictor of ChamNet, Dai et al., CVPR 2019).

Both models are tiny (tens of units, at most a few hundred training points), where BLAS
threads only cost: on a loaded 2-core machine a 150 x 150 Cholesky solve took about 120 ms
with OpenBLAS's 2 threads and 1 ms with one. :func:`single_threaded_blas` limits BLAS to one
thread for the duration of a ``with`` block (threadpoolctl, as scikit-learn itself does around
small problems) and restores the previous setting after it; searchers wrap their model fitting
and prediction in it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

_CONTROLLER: Any = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with BLAS (OpenBLAS / MKL) limited to one thread; restore it afterwards."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()  # inspects the loaded libraries once (a few ms)
    with _CONTROLLER.limit(limits=1, user_api="blas"):
        yield


class MLPEnsemble:
    """An ensemble of ``members`` MLPs trained on the same data (see the module docstring).

    Args:
        in_dim: input features.
        members, layers, width: ensemble size, hidden layers per net, units per hidden layer.
        lr, epochs, batch_size: Adam learning rate, passes over the data, mini-batch size.
        rng: the generator for initialisation and shuffling.
    """

    def __init__(
        self, in_dim: int, *, members: int, layers: int, width: int, lr: float, epochs: int, batch_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.members, self.lr, self.epochs, self.batch_size = members, lr, epochs, batch_size
        self.rng = rng
        dims = [in_dim] + [width] * layers + [1]
        shapes = [(members, a, b) for a, b in zip(dims[:-1], dims[1:])] + [(members, 1, b) for b in dims[1:]]
        sizes = [int(np.prod(shape)) for shape in shapes]
        # all parameters live in one flat array (so Adam is a few vector operations); views below
        self.params = np.zeros(sum(sizes), dtype=np.float32)
        self.grads = np.zeros_like(self.params)
        views, gviews, offset = [], [], 0
        for shape, size in zip(shapes, sizes):
            views.append(self.params[offset:offset + size].reshape(shape))
            gviews.append(self.grads[offset:offset + size].reshape(shape))
            offset += size
        n_layers = len(dims) - 1
        self.weights, self.biases = views[:n_layers], views[n_layers:]
        self._gw, self._gb = gviews[:n_layers], gviews[n_layers:]
        for w, (fan_in, fan_out) in zip(self.weights, zip(dims[:-1], dims[1:])):
            limit = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform (Keras Dense default)
            w[...] = rng.uniform(-limit, limit, size=w.shape)
        self.y_mean, self.y_std = 0.0, 1.0

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """``x``: ``[members, n, in_dim]`` -> outputs ``[members, n]`` and every layer's input."""
        inputs = []
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            h = np.matmul(h, w) + b
            if i < last:
                h = np.maximum(h, 0.0)
        return h[..., 0], inputs

    def _backward(self, inputs: list[np.ndarray], grad_out: np.ndarray) -> None:
        """Fill ``self.grads`` from ``d loss / d output`` (``[members, n]``)."""
        delta = grad_out[..., None]
        for i in range(len(self.weights) - 1, -1, -1):
            h = inputs[i]
            np.matmul(h.transpose(0, 2, 1), delta, out=self._gw[i])
            self._gb[i][...] = delta.sum(axis=1, keepdims=True)
            if i > 0:
                delta = np.matmul(delta, self.weights[i].transpose(0, 2, 1)) * (h > 0)

    def fit(self, x: np.ndarray, y: np.ndarray) -> float:
        """Train every member on ``x`` ``[n, in_dim]``, ``y`` ``[n]``; return the training MAE
        (in ``y``'s units, averaged over members)."""
        n = len(y)
        self.y_mean = float(np.mean(y))
        std = float(np.std(y))
        self.y_std = std if std > 1e-12 else 1.0
        xs = np.asarray(x, dtype=np.float32)
        ys = ((np.asarray(y, dtype=np.float64) - self.y_mean) / self.y_std).astype(np.float32)
        m = np.zeros_like(self.params)
        v = np.zeros_like(self.params)
        beta1, beta2, eps = 0.9, 0.99, 1e-7
        t = 0
        for _ in range(self.epochs):
            order = self.rng.random((self.members, n)).argsort(axis=1)  # each member its own shuffle
            for start in range(0, n, self.batch_size):
                idx = order[:, start:start + self.batch_size]  # [members, b]
                out, inputs = self._forward(xs[idx])
                # d/d(out) of each member's mean absolute error over its batch
                self._backward(inputs, np.sign(out - ys[idx]) / idx.shape[1])
                t += 1
                m *= beta1
                m += (1 - beta1) * self.grads
                v *= beta2
                v += (1 - beta2) * self.grads * self.grads
                step = self.lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)  # Keras's bias correction
                self.params -= step * m / (np.sqrt(v) + eps)
        out, _ = self._forward(np.broadcast_to(xs, (self.members, *xs.shape)))
        return float(np.abs(out - ys).mean()) * self.y_std

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions of every member: ``[members, n]`` (in ``y``'s units)."""
        xs = np.asarray(x, dtype=np.float32)
        out, _ = self._forward(np.broadcast_to(xs, (self.members, *xs.shape)))
        return out.astype(np.float64) * self.y_std + self.y_mean


def fit_gp(x: np.ndarray, y: np.ndarray, *, random_state: int, restarts: int = 0) -> Any:
    """A ``GaussianProcessRegressor`` fitted to ``(x, y)``, kernel hyper-parameters by maximum
    marginal likelihood (L-BFGS-B, ``restarts`` extra random starts from ``random_state``).

    Kernel: ``Constant * Matern(nu=2.5) + White`` on targets normalised by scikit-learn
    (``normalize_y=True``). Convergence warnings of the optimiser are silenced (a bound reached
    on a tiny data set is expected, not an error).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=1.0, length_scale_bounds=(1e-2, 1e3), nu=2.5) \
        + WhiteKernel(noise_level=1e-2, noise_level_bounds=(1e-6, 1e1))
    gp = GaussianProcessRegressor(
        kernel=kernel, normalize_y=True, n_restarts_optimizer=restarts, random_state=random_state,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    return gp


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """``E[max(f - best, 0)]`` for ``f ~ N(mean, std)``; where ``std`` is 0, ``max(mean - best, 0)``."""
    from scipy.stats import norm  # imported here: scipy.stats is slow to import and rarely needed

    gain = mean - best
    safe = np.where(std > 0, std, 1.0)
    z = gain / safe
    return np.where(std > 0, safe * (z * norm.cdf(z) + norm.pdf(z)), np.maximum(gain, 0.0))
