"""Update compression: codecs that shrink a worker's flat float32 update before it travels.

Where things are:

- ``codec``: the :class:`Compressed` payload, the :class:`Codec` protocol and :class:`Identity`.
- ``quantize``: stochastic 8/4/2-bit quantization with packed codes (:class:`Quantizer`).
- ``sparsify``: top-k with error feedback (:class:`TopK`) and shared-seed random-k (:class:`RandomK`,
  :func:`shared_indices`).
- ``pipeline``: :func:`make_codec` from a spec string such as ``"topk:0.1+q8"``; :func:`ratio`.
- ``secure``: :func:`secure_plan`, what a spec becomes under secure aggregation (shared coordinates,
  16-bit sums).

The seed README's ``GradientCompressor`` façade is :mod:`federated.communication`.
"""

from federated.compression.codec import Codec, Compressed, Identity
from federated.compression.pipeline import SPECS, make_codec, ratio
from federated.compression.quantize import BITS, Quantizer, pack_codes, unpack_codes
from federated.compression.secure import SECURE_SPECS, SecurePlan, secure_plan
from federated.compression.sparsify import RandomK, TopK, kept_count, shared_indices

__all__ = [
    "BITS",
    "SECURE_SPECS",
    "SPECS",
    "Codec",
    "Compressed",
    "Identity",
    "Quantizer",
    "RandomK",
    "SecurePlan",
    "TopK",
    "kept_count",
    "make_codec",
    "pack_codes",
    "ratio",
    "secure_plan",
    "shared_indices",
    "unpack_codes",
]
