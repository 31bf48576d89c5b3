"""Local training on a worker: the MLX side of a round (FedAvg / FedProx client update).

A :class:`LocalTrainer` owns one model and is reused for every fit, possibly for many virtual clients in one
process, so a fit on a tiny client must cost about a millisecond. What makes that possible:

- the training step is ``mx.compile``d once per (optimizer, momentum, FedProx on/off), with the model and
  optimizer state passed through ``inputs=``/``outputs=`` and the FedProx anchor (global weights) and ``mu``
  as arguments, so a new round or a new client never re-traces;
- batches are padded to a fixed size with a 0/1 sample mask, so the last, short batch and clients of every
  size share one compiled shape (the batch is ``min(batch_size, next power of two >= N)``, so a 14-sample
  client runs a 16-row batch rather than 32);
- loss and accuracy stay as MLX arrays during an epoch and are read once per epoch (no ``.item()`` per
  step).

Optimizer state is reset at every fit: each round starts local training afresh from the global model, as in
standard FedAvg. Randomness (the per-epoch shuffle) comes from ``seed`` only, so a fit is reproducible.

A fit's settings are a :class:`~federated.config.training.TrainConfig`, the training settings' one schema
(shared with the run's config, which writes them into each TASK); a worker parses every TASK's ``train``
object with ``TrainConfig.from_dict``, which checks each name, type and bound, and :meth:`LocalTrainer.fit`
validates the settings again. It is re-exported here with its limits, where a fit's caller looks for it.

With ``dp_clip > 0`` a fit runs record-level DP-SGD instead (:mod:`federated.privacy.dpsgd`): Poisson-
sampled batches at rate ``q``, per-example clipping to ``dp_clip``, Gaussian noise of std
``dp_noise_multiplier * dp_clip`` on each summed gradient, ``epochs * round(1/q)`` steps. The sampling
follows ``seed``; the noise does not (it is drawn from the OS's entropy, so a broker that knows the seed
cannot remove it), so a DP fit with noise is not reproducible. The non-private path is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn

from federated.config.training import MAX_BATCH_SIZE, MAX_EPOCHS, OPTIMIZERS, TrainConfig
from federated.models import flat_parameters, get_weights, set_weights
from federated.privacy.dpsgd import DpSgdStep, poisson_batch_rows, poisson_sample, supports_vmap
from federated.privacy.noise import noise_rng

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_DP_STEPS",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "FitResult",
    "LocalTrainer",
    "TrainConfig",
]

#: Bound on DP-SGD steps in one fit (``epochs * round(1 / q)``): a tiny sampling rate is a lot of work.
MAX_DP_STEPS = 1_000_000
#: Noise for this many parameters is drawn in one NumPy call (several steps at once for small models).
_NOISE_BLOCK = 1 << 22


@dataclass(frozen=True)
class FitResult:
    """Outcome of one local fit.

    ``update`` is local weights minus global weights (float32, same names as the model); ``loss`` and
    ``accuracy`` (0..1) are the mean cross-entropy (without the FedProx term) and accuracy over the last
    epoch's training batches; ``train_s`` is the fit's wall time in seconds (``time.perf_counter``).

    For DP-SGD fits, ``dp_steps`` is the number of noised steps and ``dp_sampling_rate`` the Poisson rate
    q used (what an accountant records: ``record(q, dp_noise_multiplier, dp_steps)``); both are 0 for
    non-private fits. ``loss``/``accuracy`` are then over the examples sampled in the last epoch and are
    *not* privatised: they are computed from the private data without noise.
    """

    update: dict[str, np.ndarray]
    num_samples: int
    loss: float
    accuracy: float
    train_s: float
    dp_steps: int = 0
    dp_sampling_rate: float = 0.0


_Step = Callable[..., tuple[mx.array, mx.array]]


class LocalTrainer:
    """Trains one MLX model locally; reuse one instance for many clients (its model is scratch space).

    :meth:`fit` and :meth:`evaluate` overwrite the model's weights with the ones passed in.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        # (optimizer, momentum, proximal on?) -> (optimizer, compiled step); built on first use.
        self._steps: dict[tuple[str, float, bool], tuple[optim.Optimizer, _Step]] = {}
        # The same key -> (optimizer, DP-SGD step), and whether mx.vmap handles this model (probed once).
        self._dp_steps: dict[tuple[str, float, bool], tuple[optim.Optimizer, DpSgdStep]] = {}
        self._vmap_ok: bool | None = None
        # Feature count -> the model's class count for inputs of that width (probed once per width).
        self._classes: dict[int, int] = {}

    @property
    def model(self) -> nn.Module:
        """The model being trained (its weights are those of the last fit or evaluation)."""
        return self._model

    def fit(
        self,
        global_weights: Mapping[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        cfg: TrainConfig,
        *,
        seed: int,
    ) -> FitResult:
        """Train from ``global_weights`` on ``(x, y)`` and return the update and last-epoch metrics.

        ``x`` is (N, F) features, ``y`` (N,) integer labels, N >= 1. Raises ValueError for a bad config or
        mismatched data, and :class:`~federated.models.ModelError` if the weights do not fit the model.
        """
        start = time.perf_counter()
        cfg.validate()
        x32, y32 = _check_data(x, y)
        global32 = {name: np.asarray(value, dtype=np.float32) for name, value in global_weights.items()}
        set_weights(self._model, global32)
        self._check_fit(x32, y32)
        if cfg.dp_enabled:
            return self._fit_dp(global32, x32, y32, cfg, seed=seed, start=start)
        optimizer, step = self._step_for(cfg)
        _reset_optimizer(optimizer, self._model, cfg.learning_rate)
        anchor: list[mx.array] = []
        if cfg.proximal_mu > 0:
            # The anchor is an argument of the compiled step (not a captured constant), so each round's
            # global model is used without re-tracing.
            anchor = [value for _, value in flat_parameters(self._model.trainable_parameters())]
        mu = mx.array(cfg.proximal_mu, dtype=mx.float32)

        n = len(y32)
        batch = min(cfg.batch_size, 1 << (n - 1).bit_length())
        steps = -(-n // batch)
        mask = np.zeros(steps * batch, dtype=np.float32)
        mask[:n] = 1.0
        masks = mx.array(mask.reshape(steps, batch))
        rng = np.random.default_rng(seed)
        loss_sum = correct = mx.array(0.0)
        for _ in range(cfg.epochs):
            order = np.concatenate([rng.permutation(n), np.zeros(steps * batch - n, dtype=np.int64)])
            xs = mx.array(x32[order].reshape(steps, batch, -1))
            ys = mx.array(y32[order].reshape(steps, batch))
            loss_sum = correct = mx.array(0.0)
            for i in range(steps):
                batch_loss, batch_correct = step(xs[i], ys[i], masks[i], anchor, mu)
                loss_sum = loss_sum + batch_loss
                correct = correct + batch_correct
                # Let MLX compute this step while Python queues the next one; no host sync per step.
                mx.async_eval(loss_sum, correct, self._model.state, optimizer.state)
            mx.eval(loss_sum, correct)
        return self._result(global32, n, loss_sum, correct, n, start)

    def _fit_dp(
        self,
        global32: dict[str, np.ndarray],
        x32: np.ndarray,
        y32: np.ndarray,
        cfg: TrainConfig,
        *,
        seed: int,
        start: float,
    ) -> FitResult:
        """DP-SGD fit (see the module docstring); the model already holds ``global32``."""
        n = len(y32)
        q = cfg.dp_sampling_rate if cfg.dp_sampling_rate > 0 else min(1.0, cfg.batch_size / n)
        steps_per_epoch = max(1, round(1.0 / q))
        total_steps = cfg.epochs * steps_per_epoch
        if total_steps > MAX_DP_STEPS:
            raise ValueError(
                f"DP-SGD would run {total_steps} steps (epochs {cfg.epochs} * round(1/q) with q={q:g}); "
                f"the limit is {MAX_DP_STEPS}: raise dp_sampling_rate or lower epochs"
            )
        if self._vmap_ok is None:
            self._vmap_ok = supports_vmap(self._model, x32, y32)
        optimizer, dp = self._dp_step_for(cfg)
        _reset_optimizer(optimizer, self._model, cfg.learning_rate)
        anchor: list[mx.array] = []
        if cfg.proximal_mu > 0:
            anchor = [value for _, value in flat_parameters(self._model.trainable_parameters())]
        mu = mx.array(cfg.proximal_mu, dtype=mx.float32)
        clip = mx.array(cfg.dp_clip, dtype=mx.float32)
        # Divide by the expected batch q*N, not the realised size: the size of a Poisson sample is private.
        inv_denominator = mx.array(1.0 / (q * n), dtype=mx.float32)
        noise_std = np.float32(cfg.dp_noise_multiplier * cfg.dp_clip)
        rows = poisson_batch_rows(n, q)
        sampler = np.random.default_rng(seed)  # which examples: reproducible from the seed
        noise = noise_rng()  # the noise: never from the seed
        chunk = partial(_dp_chunk, x32, y32, rows)
        block = max(1, _NOISE_BLOCK // dp.num_parameters)
        loss_sum = correct = mx.array(0.0)
        seen = 0
        for _ in range(cfg.epochs):
            samples = [poisson_sample(sampler, n, q) for _ in range(steps_per_epoch)]
            seen = sum(len(s) for s in samples)
            xs, ys, ws = chunk([s[:rows] for s in samples])
            loss_sum = correct = mx.array(0.0)
            for first in range(0, steps_per_epoch, block):
                last = min(first + block, steps_per_epoch)
                z = noise.standard_normal((last - first, dp.num_parameters), dtype=np.float32)
                z *= noise_std
                perturbations = mx.array(z)
                for i in range(first, last):
                    perturbation = perturbations[i - first]
                    for begin in range(rows, len(samples[i]), rows):
                        # A sample larger than the padded batch: the rest in further chunks, exactly.
                        ox, oy, ow = chunk([samples[i][begin : begin + rows]])
                        extra, extra_loss, extra_correct = dp.accumulate(ox[0], oy[0], ow[0], clip)
                        perturbation = perturbation + extra
                        loss_sum, correct = loss_sum + extra_loss, correct + extra_correct
                    batch_loss, batch_correct = dp.step(
                        xs[i], ys[i], ws[i], perturbation, anchor, mu, clip, inv_denominator
                    )
                    loss_sum = loss_sum + batch_loss
                    correct = correct + batch_correct
                    mx.async_eval(loss_sum, correct, self._model.state, optimizer.state)
            mx.eval(loss_sum, correct)
        return self._result(global32, n, loss_sum, correct, max(seen, 1), start, dp_steps=total_steps,
                            dp_sampling_rate=q)

    def _result(self, global32: dict[str, np.ndarray], n: int, loss_sum: mx.array, correct: mx.array,
                seen: int, start: float, **dp: Any) -> FitResult:
        """The fit's outcome: the update (local minus global weights) and the mean loss and accuracy over
        the ``seen`` examples that were trained on."""
        local = get_weights(self._model)
        return FitResult(update={name: local[name] - global32[name] for name in local}, num_samples=n,
                         loss=_scalar(loss_sum) / seen, accuracy=_scalar(correct) / seen,
                         train_s=time.perf_counter() - start, **dp)

    def _check_fit(self, x32: np.ndarray, y32: np.ndarray) -> None:
        """Refuse data the model cannot take, before MLX sees it: a feature count the model does not
        accept, or a label outside its classes (an out-of-range label index corrupts memory inside MLX's
        cross-entropy instead of raising). Raises ValueError naming the problem."""
        width = int(x32.shape[1])
        classes = self._classes.get(width)
        if classes is None:
            try:
                out = self._model(mx.array(x32[:1]))
                mx.eval(out)
            except (ValueError, RuntimeError) as exc:
                raise ValueError(f"the data has {width} features per example, which the model does not accept "
                                 f"({exc})") from None
            if out.ndim != 2 or out.shape[0] != 1:
                raise ValueError(f"the model maps one example to shape {tuple(out.shape)}, not to class scores")
            classes = self._classes[width] = int(out.shape[1])
        top = int(y32.max())
        if top >= classes:
            raise ValueError(f"label {top} is out of range: the model has {classes} classes (labels 0..{classes - 1})")

    def evaluate(
        self, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024
    ) -> tuple[float, float]:
        """Mean cross-entropy loss and accuracy (0..1) of ``weights`` on ``(x, y)``.

        Raises ValueError for empty or mismatched data or ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x32, y32 = _check_data(x, y)
        set_weights(self._model, {name: np.asarray(v, dtype=np.float32) for name, v in weights.items()})
        self._check_fit(x32, y32)
        loss_sum = correct = mx.array(0.0)
        for begin in range(0, len(y32), batch_size):
            xb = mx.array(x32[begin : begin + batch_size])
            yb = mx.array(y32[begin : begin + batch_size])
            logits = self._model(xb)
            loss_sum = loss_sum + nn.losses.cross_entropy(logits, yb, reduction="sum")
            correct = correct + (mx.argmax(logits, axis=1) == yb).sum()
        mx.eval(loss_sum, correct)
        return _scalar(loss_sum) / len(y32), _scalar(correct) / len(y32)

    def _step_for(self, cfg: TrainConfig) -> tuple[optim.Optimizer, _Step]:
        momentum = cfg.momentum if cfg.optimizer == "sgd" else 0.0
        key = (cfg.optimizer, momentum, cfg.proximal_mu > 0)
        if key not in self._steps:
            optimizer = _make_optimizer(cfg.optimizer, cfg.learning_rate, momentum)
            # The optimizer must own its state entries before tracing, or it would create them mid-trace.
            optimizer.init(self._model.trainable_parameters())
            self._steps[key] = (optimizer, _compile_step(self._model, optimizer, proximal=key[2]))
        return self._steps[key]

    def _dp_step_for(self, cfg: TrainConfig) -> tuple[optim.Optimizer, DpSgdStep]:
        momentum = cfg.momentum if cfg.optimizer == "sgd" else 0.0
        key = (cfg.optimizer, momentum, cfg.proximal_mu > 0)
        if key not in self._dp_steps:
            optimizer = _make_optimizer(cfg.optimizer, cfg.learning_rate, momentum)
            optimizer.init(self._model.trainable_parameters())
            step = DpSgdStep(self._model, optimizer, proximal=key[2], vectorize=bool(self._vmap_ok))
            self._dp_steps[key] = (optimizer, step)
        return self._dp_steps[key]


def _make_optimizer(name: str, learning_rate: float, momentum: float) -> optim.Optimizer:
    if name == "adam":
        # MLX's Adam defaults to no bias correction; a few local steps from a fresh state need it.
        return optim.Adam(learning_rate=learning_rate, bias_correction=True)
    return optim.SGD(learning_rate=learning_rate, momentum=momentum)


def _reset_optimizer(optimizer: optim.Optimizer, model: nn.Module, learning_rate: float) -> None:
    """Fresh moments and step count, in place: the compiled step holds a reference to this very dict."""
    state = optimizer.state
    state.clear()
    state["step"] = mx.array(0, dtype=mx.uint64)
    state["learning_rate"] = mx.array(learning_rate, dtype=mx.float32)
    optimizer.init(model.trainable_parameters())


def _compile_step(model: nn.Module, optimizer: optim.Optimizer, *, proximal: bool) -> _Step:
    def loss_fn(
        xb: mx.array, yb: mx.array, wb: mx.array, anchor: list[mx.array], mu: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        logits = model(xb)
        # Padded rows have weight 0, so the gradient is that of the mean over the real samples only.
        ce_sum = (nn.losses.cross_entropy(logits, yb, reduction="none") * wb).sum()
        loss = ce_sum / mx.maximum(wb.sum(), 1.0)
        if proximal:
            params = [value for _, value in flat_parameters(model.trainable_parameters())]
            distance = sum((mx.square(p - g).sum() for p, g in zip(params, anchor)), mx.array(0.0))
            loss = loss + 0.5 * mu * distance
        correct = ((mx.argmax(logits, axis=1) == yb) * wb).sum()
        return loss, ce_sum, correct

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    def step(
        xb: mx.array, yb: mx.array, wb: mx.array, anchor: list[mx.array], mu: mx.array
    ) -> tuple[mx.array, mx.array]:
        (_, ce_sum, correct), grads = loss_and_grad(xb, yb, wb, anchor, mu)
        optimizer.update(model, grads)
        return ce_sum, correct

    compiled: _Step = mx.compile(step, inputs=state, outputs=state)
    return compiled


def _dp_chunk(
    x32: np.ndarray, y32: np.ndarray, rows: int, samples: list[np.ndarray]
) -> tuple[mx.array, mx.array, mx.array]:
    """Padded batches ``(S, rows, F)``, labels ``(S, rows)`` and 0/1 masks for index sets of <= rows each;
    padding repeats example 0 with mask 0 (its gradient gets clip factor 0)."""
    index = np.zeros((len(samples), rows), dtype=np.int64)
    mask = np.zeros((len(samples), rows), dtype=np.float32)
    for i, sample in enumerate(samples):
        index[i, : len(sample)] = sample
        mask[i, : len(sample)] = 1.0
    return mx.array(x32[index]), mx.array(y32[index]), mx.array(mask)


def _scalar(value: mx.array) -> float:
    """A 0-d MLX array as a Python float (one host sync)."""
    return float(np.asarray(value))


def _check_data(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float32 features and int32 labels, or ValueError (nothing non-finite or non-integer reaches
    MLX: see :meth:`LocalTrainer._check_fit` for what the model itself requires)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be a non-empty 1-D label array, got shape {y.shape}")
    if x.ndim < 2 or x.shape[0] != len(y):
        raise ValueError(f"x must have shape (N, ...) with N = {len(y)} rows, got {x.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"x must hold numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf, refused just below
        x32 = np.ascontiguousarray(x.reshape(len(y), -1), dtype=np.float32)
    if not np.isfinite(x32).all():
        raise ValueError("x holds NaN or Inf (or values beyond float32)")
    if y.min() < 0 or y.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels must be integers >= 0; got labels from {y.min()} to {y.max()}")
    return x32, y.astype(np.int32, copy=False)
