"""Models used only by benchmarks (loaded as ``--model benchmarks.models:NAME`` from the repository root)."""

from __future__ import annotations

from mlx import nn


class WideMLP(nn.Module):
    """64 -> 1024 -> 960 -> classes: about 1.06M parameters on digits, to measure megabyte-sized updates."""

    def __init__(self, input_shape: tuple[int, ...] = (64,), num_classes: int = 10) -> None:
        super().__init__()
        features = 1
        for dim in input_shape:
            features *= dim
        self.layers = [nn.Linear(features, 1024), nn.Linear(1024, 960), nn.Linear(960, num_classes)]

    def __call__(self, x):  # type: ignore[no-untyped-def]
        x = nn.relu(self.layers[0](x))
        x = nn.relu(self.layers[1](x))
        return self.layers[2](x)


def wide_mlp(input_shape: tuple[int, ...] = (64,), num_classes: int = 10) -> WideMLP:
    return WideMLP(input_shape, num_classes)


class HugeMLP(nn.Module):
    """64 -> 7040 -> 7040 -> classes: about 50.1M parameters (200 MB of float32), the large-model case."""

    def __init__(self, input_shape: tuple[int, ...] = (64,), num_classes: int = 10, width: int = 7040) -> None:
        super().__init__()
        features = 1
        for dim in input_shape:
            features *= dim
        self.layers = [nn.Linear(features, width), nn.Linear(width, width), nn.Linear(width, num_classes)]

    def __call__(self, x):  # type: ignore[no-untyped-def]
        x = nn.relu(self.layers[0](x))
        x = nn.relu(self.layers[1](x))
        return self.layers[2](x)


def huge_mlp(input_shape: tuple[int, ...] = (64,), num_classes: int = 10) -> HugeMLP:
    return HugeMLP(input_shape, num_classes)
