"""The seed README's gradient-compression API: a façade over :mod:`federated.compression`.

``GradientCompressor`` flattens a (possibly nested) mapping of gradients, MLX or numpy leaves, in
sorted dotted-name order (the names ``mlx.utils.tree_flatten`` gives), sends the top
``compression_ratio`` fraction of coordinates with error feedback, 8-bit quantizing their values when
``use_quantization``, and cuts the decoded vector back into the same nesting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from federated.compression.codec import Compressed
from federated.compression.pipeline import make_codec
from federated.compression.quantize import Quantizer
from federated.compression.sparsify import TopK, check_fraction

__all__ = ["GradientCompressor"]


def _flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Leaves of a nested mapping as float32 numpy arrays keyed by dotted path."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        # A dot inside a key would make the dotted path ambiguous when the tree is rebuilt.
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"gradient key {prefix + str(key)!r}: keys must be non-empty str without '.'")
        if isinstance(value, Mapping):
            out.update(_flatten_tree(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            raise TypeError(f"gradient {prefix + key!r} is a {type(value).__name__}; only nested "
                            "mappings of arrays are supported")
        else:
            out[prefix + key] = np.asarray(value, dtype=np.float32)  # np.asarray converts MLX arrays
    return out


def _unflatten_tree(leaves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in leaves.items():
        *parents, last = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


class GradientCompressor:
    """Top-k gradient compression with error feedback, plus 8-bit quantization of the kept values.

    ``compression_ratio`` is the fraction of coordinates kept, in (0, 1] (0.1 keeps the largest 10%);
    the achieved size reduction is reported as ``metadata["ratio"]``. One instance per worker: it
    carries the error-feedback residual between calls. ``salt`` seeds the quantizer's rounding noise
    (see :class:`~federated.compression.quantize.Quantizer`). Raises ``ValueError`` for a ratio outside
    (0, 1].
    """

    def __init__(self, compression_ratio: float = 0.1, use_quantization: bool = True, *,
                 salt: int | None = None) -> None:
        self.compression_ratio = check_fraction(compression_ratio)
        self.use_quantization = use_quantization
        quantizer = Quantizer(8, salt=salt) if use_quantization else None
        self.codec = TopK(self.compression_ratio, quantizer=quantizer)
        # The codec's name is a make_codec spec, which is how decompress rebuilds it without state.
        self.spec = self.codec.name
        self.rounds = 0

    def compress(self, gradients: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The payload tensors and JSON-serialisable metadata (``codec``, ``shapes``, ``length``,
        ``payload_meta``, ``original_bytes``, ``compressed_bytes``, ``ratio``) for ``gradients``.
        Raises ``ValueError`` for no gradients, bad keys, non-finite values or a parameter count that
        changed since the last call, ``TypeError`` for list or tuple containers."""
        leaves = _flatten_tree(gradients)
        if not leaves:
            raise ValueError("no gradients to compress")
        names = sorted(leaves)
        vector = np.concatenate([leaves[name].reshape(-1) for name in names])
        # The round counter only varies the quantizer's rounding noise from call to call.
        payload = self.codec.encode(vector, round_seed=self.rounds)
        self.rounds += 1
        metadata: dict[str, Any] = {
            "codec": self.spec,
            "shapes": {name: list(leaves[name].shape) for name in names},
            "length": int(vector.size),
            "payload_meta": dict(payload.meta),
            "original_bytes": int(vector.size) * 4,
            "compressed_bytes": payload.nbytes,
            "ratio": int(vector.size) * 4 / payload.nbytes if payload.nbytes else 1.0,
        }
        return dict(payload.tensors), metadata

    @staticmethod
    def decompress(compressed: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The gradients ``compressed`` and ``metadata`` stand for: float32 numpy arrays in the nesting
        of the original. Needs no state, so any instance (or the class) can decompress. Raises
        ``ValueError`` for metadata or tensors that do not fit together."""
        try:
            codec = make_codec(metadata["codec"])
            shapes = {str(k): tuple(int(s) for s in v) for k, v in metadata["shapes"].items()}
            length = int(metadata["length"])
            payload = Compressed({k: np.asarray(v) for k, v in compressed.items()},
                                 dict(metadata["payload_meta"]), 0)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"metadata is not what GradientCompressor.compress makes: {exc!r}") from None
        if any(s < 0 for shape in shapes.values() for s in shape) \
                or sum(math.prod(shape) for shape in shapes.values()) != length:
            raise ValueError(f"shapes {metadata['shapes']} do not add up to length {length}")
        vector = codec.decode(payload, length)
        leaves: dict[str, np.ndarray] = {}
        offset = 0
        for name in sorted(shapes):
            size = math.prod(shapes[name])
            leaves[name] = vector[offset:offset + size].reshape(shapes[name])
            offset += size
        return _unflatten_tree(leaves)
