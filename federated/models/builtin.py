"""The built-in models: a small MLP, a small CNN for images, a 1-D CNN for signals, a logistic model.

The MLP and CNN are sized for 8x8 digits but usable on any input; :class:`CNN1D` is MNIST-1D's CNN and
:class:`Logistic` the multinomial logistic regression of the FedProx synthetic benchmark. All take a batch
of *flat* float32 features, shape (B, F), because that is how datasets and the trainer hold samples
(:class:`federated.data.Dataset`); the CNNs reshape to their channels-last ``input_shape`` themselves.
Parameter names (``tree_flatten`` paths) are the tensor names on the wire, so renaming an attribute here
is a protocol change.
"""

from __future__ import annotations

import itertools
import math

import mlx.core as mx
from mlx import nn

__all__ = ["CNN", "CNN1D", "MLP", "Logistic"]


class MLP(nn.Module):
    """Fully connected ReLU network: F -> hidden... -> num_classes logits.

    The default single hidden layer of 64 matches 128 units on digits (about 96% test accuracy) at a third
    less compute and half the update size (4,810 parameters for 64 inputs). Parameters are named
    ``layers.{i}.weight`` / ``layers.{i}.bias``.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # MLX leaves nn.Module.__init__ unannotated
        sizes = [num_features, *hidden, num_classes]
        self.layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]

    def __call__(self, x: mx.array) -> mx.array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = nn.relu(layer(x))
        out: mx.array = self.layers[-1](x)
        return out


class CNN(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels, the second with stride 2) and a linear head.

    ``input_shape`` is (H, W, C) (channels last, as MLX's ``conv2d`` wants). On 8x8x1 digits this is a
    9,930-parameter model; the stride halves the map so the head stays small on larger images too.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # MLX leaves nn.Module.__init__ unannotated
        height, width, channels = input_shape
        # Plain ints, not a tuple: MLX stores tuple attributes in the module's parameter tree.
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.conv1 = nn.Conv2d(channels, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1)
        flat = math.ceil(height / 2) * math.ceil(width / 2) * 32
        self.head = nn.Linear(flat, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = x.reshape(x.shape[0], self.height, self.width, self.channels)
        x = nn.relu(self.conv1(x))
        x = nn.relu(self.conv2(x))
        out: mx.array = self.head(x.reshape(x.shape[0], -1))
        return out


class CNN1D(nn.Module):
    """Three 1-D convolutions with ReLU, each with stride 2, and a linear head: MNIST-1D's CNN.

    The layers are those of the MNIST-1D authors' ``ConvBase`` (Greydanus & Kobak 2024): ``channels`` (25)
    filters of width 5, then two of width 3, padding 1. ``input_shape`` is (L,) or (L, C) (channels last,
    as MLX's ``conv1d`` wants). On length-40 signals this is a 5,210-parameter model whose head sees 5
    positions of 25 channels. Raises ``ValueError`` for a signal too short to survive the three strides.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # MLX leaves nn.Module.__init__ unannotated
        length, in_channels = (input_shape[0], 1) if len(input_shape) == 1 else input_shape[:2]
        self.length, self.in_channels = int(length), int(in_channels)
        self.convs = [
            nn.Conv1d(in_channels, channels, kernel_size=5, stride=2, padding=1),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
        ]
        out = self.length
        for kernel in (5, 3, 3):
            out = (out + 2 - kernel) // 2 + 1
        if out < 1:
            raise ValueError(f"CNN1D needs signals of length >= 3, got {self.length}")
        self.head = nn.Linear(out * channels, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = x.reshape(x.shape[0], self.length, self.in_channels)
        for conv in self.convs:
            x = nn.relu(conv(x))
        out: mx.array = self.head(x.reshape(x.shape[0], -1))
        return out


class Logistic(nn.Module):
    """Multinomial logistic regression: one linear layer, F -> num_classes logits (softmax in the loss).

    The model of the FedProx synthetic benchmark (Li et al. 2020). Parameters: ``linear.weight``,
    ``linear.bias`` (610 for 60 features and 10 classes).
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # MLX leaves nn.Module.__init__ unannotated
        self.linear = nn.Linear(num_features, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        out: mx.array = self.linear(x.reshape(x.shape[0], -1))
        return out
