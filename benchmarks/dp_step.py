"""Cost of a DP-SGD step against a non-private step: one JSON line.

Model: the built-in MLP (64 -> 64 -> 10, 4,810 parameters) on digits-shaped data (64 features, 10
classes, random values: the cost does not depend on them). For each batch size B in {16, 64}:

- ``plain_ms`` / ``dp_ms``: one compiled step on a B-row batch, the trainer's own step functions
  (``LocalTrainer``'s FedAvg step; ``DpSgdStep`` with per-example ``vmap`` gradients, clipping, noise from
  the OS-seeded NumPy generator, drawn in blocks as the trainer does); ``ratio = dp_ms / plain_ms``.
- ``fit_plain_ms`` / ``fit_dp_ms``: per step of a whole ``LocalTrainer.fit`` (1,024 samples, 3 epochs)
  with batch_size B, the DP fit at the same expected batch (q = B / 1024): this adds Poisson sampling,
  padding to ``poisson_batch_rows`` and overflow chunks, so ``fit_ratio`` is what training really pays.

Compiled functions are warmed up first; each figure is the median of many timed repetitions, with the
variants interleaved so that machine load affects them alike. Usage:

    uv run python benchmarks/dp_step.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import mlx.core as mx
import numpy as np

from federated.models import build_model, get_weights
from federated.privacy.dpsgd import DpSgdStep, poisson_batch_rows
from federated.privacy.noise import noise_rng
from federated.worker.trainer import LocalTrainer, TrainConfig, _reset_optimizer

FEATURES, CLASSES, SAMPLES, EPOCHS = 64, 10, 1024, 3
STEPS_PER_SAMPLE = 100  # steps per timed sample of the step-level figures


def _median_ms(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` rounds; each round runs every variant once (interleaved)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def _step_runs(batch: int) -> dict[str, Callable[[], float]]:
    rng = np.random.default_rng(0)
    xb = mx.array(rng.random((batch, FEATURES), dtype=np.float32))
    yb = mx.array(rng.integers(0, CLASSES, batch).astype(np.int32))
    wb = mx.ones((batch,))
    cfg = TrainConfig(batch_size=batch)

    plain_trainer = LocalTrainer(build_model("mlp", input_shape=(FEATURES,), num_classes=CLASSES, seed=0))
    optimizer, plain_step = plain_trainer._step_for(cfg)
    _reset_optimizer(optimizer, plain_trainer.model, cfg.learning_rate)
    mu = mx.array(0.0)

    dp_model = build_model("mlp", input_shape=(FEATURES,), num_classes=CLASSES, seed=0)
    dp_trainer = LocalTrainer(dp_model)
    dp_optimizer, _ = dp_trainer._step_for(cfg)  # an SGD optimizer set up like the trainer's
    dp = DpSgdStep(dp_model, dp_optimizer, proximal=False)
    clip, inv = mx.array(1.0), mx.array(1.0 / batch)
    noise = noise_rng()

    def plain() -> float:
        start = time.perf_counter()
        for _ in range(STEPS_PER_SAMPLE):
            out = plain_step(xb, yb, wb, [], mu)
            mx.async_eval(out, plain_trainer.model.state, optimizer.state)
        mx.eval(out, plain_trainer.model.state)
        return (time.perf_counter() - start) / STEPS_PER_SAMPLE * 1e3

    def private() -> float:
        start = time.perf_counter()
        z = noise.standard_normal((STEPS_PER_SAMPLE, dp.num_parameters), dtype=np.float32)
        perturbations = mx.array(z)
        for i in range(STEPS_PER_SAMPLE):
            out = dp.step(xb, yb, wb, perturbations[i], [], mu, clip, inv)
            mx.async_eval(out, dp_model.state, dp_optimizer.state)
        mx.eval(out, dp_model.state)
        return (time.perf_counter() - start) / STEPS_PER_SAMPLE * 1e3

    for _ in range(3):  # compile and warm up
        plain()
        private()
    return {"plain": plain, "dp": private}


def _fit_runs(batch: int) -> dict[str, Callable[[], float]]:
    rng = np.random.default_rng(1)
    x = rng.random((SAMPLES, FEATURES), dtype=np.float32)
    y = rng.integers(0, CLASSES, SAMPLES)
    trainer = LocalTrainer(build_model("mlp", input_shape=(FEATURES,), num_classes=CLASSES, seed=0))
    weights = get_weights(trainer.model)
    plain_cfg = TrainConfig(epochs=EPOCHS, batch_size=batch)
    dp_cfg = TrainConfig(epochs=EPOCHS, batch_size=batch, dp_clip=1.0, dp_noise_multiplier=1.0)
    plain_steps = EPOCHS * -(-SAMPLES // batch)
    seeds = iter(range(10**9))

    def fit(cfg: TrainConfig) -> float:
        start = time.perf_counter()
        result = trainer.fit(weights, x, y, cfg, seed=next(seeds))
        steps = result.dp_steps or plain_steps
        return (time.perf_counter() - start) / steps * 1e3

    for _ in range(2):
        fit(plain_cfg)
        fit(dp_cfg)
    return {"fit_plain": lambda: fit(plain_cfg), "fit_dp": lambda: fit(dp_cfg)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per figure (median)")
    args = parser.parse_args()
    result: dict[str, object] = {"model": "mlp", "features": FEATURES, "classes": CLASSES}
    worst = 0.0
    for batch in (16, 64):
        step = _median_ms(_step_runs(batch), args.repeats)
        fit = _median_ms(_fit_runs(batch), args.repeats)
        ratio = step["dp"] / step["plain"]
        worst = max(worst, ratio)
        result[f"batch_{batch}"] = {
            "plain_ms": round(step["plain"], 4),
            "dp_ms": round(step["dp"], 4),
            "ratio": round(ratio, 2),
            "padded_rows": poisson_batch_rows(SAMPLES, batch / SAMPLES),
            "fit_plain_ms": round(fit["fit_plain"], 4),
            "fit_dp_ms": round(fit["fit_dp"], 4),
            "fit_ratio": round(fit["fit_dp"] / fit["fit_plain"], 2),
        }
    result["ratio"] = round(worst, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
