"""Build a model from a spec string: ``mlp``, ``cnn``, ``cnn1d``, ``logistic`` or ``MODULE:FACTORY``.

The broker and every worker call :func:`build_model` with the same spec, shapes and seed, and get models
with identical parameter names, shapes and (with a seed) initial values.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn

from federated.models.builtin import CNN, CNN1D, MLP, Logistic
from federated.models.errors import ModelError

__all__ = ["MODEL_SPECS", "build_model"]

#: Human-readable list of accepted specs, used in error messages and CLI help.
MODEL_SPECS = '"mlp", "cnn", "cnn1d", "logistic", "MODULE:FACTORY"'


def build_model(
    spec: str, *, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build the model named by ``spec`` for samples of ``input_shape`` and ``num_classes`` classes.

    ``spec`` is ``"mlp"``, ``"cnn"`` (needs an image ``input_shape`` (H, W, C), or (H, W) for one channel),
    ``"cnn1d"`` (a signal: (L,) or (L, C)), ``"logistic"`` or ``"MODULE:FACTORY"``: ``MODULE`` is imported, ``FACTORY`` (a dotted attribute path) is called with no
    arguments, or with ``input_shape=``/``num_classes=`` when its signature accepts them, and must return an
    ``mlx.nn.Module``. All models take flat (B, F) float32 input. With ``seed`` the initial parameters are
    deterministic; MLX's global random state is restored afterwards so that later randomness does not
    follow from a seed every participant knows. Parameters are evaluated before returning.
    Raises :class:`ModelError` for a bad spec, bad shapes or a factory that fails.
    """
    input_shape = _check_shapes(input_shape, num_classes)
    with _seeded(seed):
        model = _construct(spec, input_shape, num_classes)
        mx.eval(model.parameters())
    return model


def _check_shapes(input_shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ModelError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    return shape


def _construct(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if spec == "mlp":
        return MLP(int(np.prod(input_shape)), num_classes)
    if spec == "cnn":
        if len(input_shape) == 2:
            input_shape = (*input_shape, 1)
        if len(input_shape) != 3:
            raise ModelError(
                f"model 'cnn' needs an image input_shape (H, W, C) or (H, W), got {input_shape}; "
                "use 'mlp' for flat features"
            )
        height, width, channels = input_shape
        return CNN((height, width, channels), num_classes)
    if spec == "cnn1d":
        if len(input_shape) > 2 or input_shape[0] < 3:
            raise ModelError(f"model 'cnn1d' needs a signal input_shape (L,) or (L, C) with L >= 3, got "
                             f"{input_shape}; use 'cnn' for images")
        return CNN1D(input_shape, num_classes)
    if spec == "logistic":
        return Logistic(int(np.prod(input_shape)), num_classes)
    module_name, sep, attr_path = spec.partition(":")
    if sep and module_name and attr_path:
        return _from_factory(spec, module_name, attr_path, input_shape, num_classes)
    raise ModelError(f"unknown model {spec!r}; allowed: {MODEL_SPECS}")


def _from_factory(
    spec: str, module_name: str, attr_path: str, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # user code: any import-time failure is a bad spec, not a crash
        raise ModelError(f"model {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ModelError(f"model {spec!r}: {module_name!r} has no attribute {attr_path!r}") from exc
    if not callable(target):
        raise ModelError(f"model {spec!r}: {attr_path!r} is not callable")
    kwargs = _shape_kwargs(target, input_shape, num_classes)
    try:
        model = target(**kwargs)
    except Exception as exc:  # user code again: report which factory failed and how
        raise ModelError(f"model {spec!r}: factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: factory returned {type(model).__name__}, not an mlx.nn.Module")
    return model


def _shape_kwargs(
    factory: Callable[..., Any], input_shape: tuple[int, ...], num_classes: int
) -> dict[str, Any]:
    """Pass ``input_shape``/``num_classes`` only to factories that accept them by keyword."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some extension types have no signature
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keyword_ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    offered = {"input_shape": input_shape, "num_classes": num_classes}
    return {
        name: value
        for name, value in offered.items()
        if takes_any or (name in params and params[name].kind in keyword_ok)
    }


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed MLX's global generator for the block, then put back the exact key that was there before.

    MLX has no API to set the key, but ``mx.random.seed(s)`` installs the key ``[s >> 32, s & 0xffffffff]``,
    so any saved key can be re-installed through it; the check below guards that assumption.
    """
    if seed is None:
        yield
        return
    saved = _global_key()
    mx.random.seed(int(seed) % 2**64)
    try:
        yield
    finally:
        mx.random.seed((int(saved[0]) << 32) | int(saved[1]))
        if not np.array_equal(_global_key(), saved):  # pragma: no cover
            raise RuntimeError("could not restore MLX's random state after seeded model construction")


def _global_key() -> np.ndarray:
    """MLX's global PRNG key as two uint32 words."""
    state: Any = mx.random.state  # typed as a bare object by MLX's stubs
    return np.array(state[0], dtype=np.uint32)
