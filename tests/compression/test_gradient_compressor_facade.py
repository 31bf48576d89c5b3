"""Tests of the seed README's ``GradientCompressor`` façade (``federated.communication``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated.communication import GradientCompressor
from federated.compression import kept_count

SNIPPETS = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "snippets"


def gradients(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"linear": {"weight": rng.standard_normal((4, 10)).astype(np.float32),
                       "bias": rng.standard_normal(4).astype(np.float32)},
            "scale": rng.standard_normal(()).astype(np.float32)}


def test_round_trip_keeps_nesting_shapes_and_the_largest_values() -> None:
    grads = gradients()
    compressor = GradientCompressor(compression_ratio=0.25, use_quantization=False)
    compressed, metadata = compressor.compress(grads)
    out = GradientCompressor.decompress(compressed, metadata)
    assert set(out) == {"linear", "scale"} and set(out["linear"]) == {"weight", "bias"}
    for got, want in [(out["linear"]["weight"], grads["linear"]["weight"]),
                      (out["linear"]["bias"], grads["linear"]["bias"]), (out["scale"], grads["scale"])]:
        assert got.shape == want.shape and got.dtype == np.float32
        kept = got != 0
        np.testing.assert_array_equal(got[kept], want[kept])
    flat = np.concatenate([grads["linear"]["bias"], grads["linear"]["weight"].ravel(), [grads["scale"]]])
    sent = np.concatenate([out["linear"]["bias"], out["linear"]["weight"].ravel(), [out["scale"]]])
    assert np.count_nonzero(sent) == round(0.25 * 45)
    assert np.min(np.abs(flat[sent != 0])) >= np.max(np.abs(flat[sent == 0]))


def test_metadata_is_json_and_reports_sizes() -> None:
    compressed, metadata = GradientCompressor(0.1, True, salt=1).compress(gradients())
    restored = json.loads(json.dumps(metadata, allow_nan=False))
    assert restored["codec"] == "topk:0.1+q8"
    assert restored["shapes"] == {"linear.bias": [4], "linear.weight": [4, 10], "scale": []}
    assert restored["original_bytes"] == 45 * 4
    k = kept_count(45, 0.1)  # 4.5 rounds half up to 5
    assert k == 5
    assert restored["compressed_bytes"] == 4 * k + k + 4  # int32 indices, int8 codes, float32 scale
    assert restored["ratio"] == pytest.approx(restored["original_bytes"] / restored["compressed_bytes"])
    assert sum(t.nbytes for t in compressed.values()) + 4 == restored["compressed_bytes"]
    # Decompression needs only what travels, so a JSON round trip of the metadata is enough.
    out = GradientCompressor().decompress(compressed, restored)
    assert out["linear"]["weight"].shape == (4, 10)


def test_quantized_values_are_close() -> None:
    grads = gradients(3)
    compressed, metadata = GradientCompressor(0.5, True, salt=0).compress(grads)
    out = GradientCompressor.decompress(compressed, metadata)
    got, want = out["linear"]["weight"], grads["linear"]["weight"]
    kept = got != 0
    bound = metadata["payload_meta"]["scale"] / 127
    assert np.max(np.abs(got[kept] - want[kept])) <= bound * (1 + 1e-6)


def test_error_feedback_across_calls() -> None:
    compressor = GradientCompressor(0.1, use_quantization=False)
    total_in = np.zeros(45)
    total_out = np.zeros(45)
    for r in range(100):
        grads = gradients(r)
        out = compressor.decompress(*compressor.compress(grads))
        total_in += np.concatenate([grads["linear"]["bias"], grads["linear"]["weight"].ravel(),
                                    [grads["scale"]]])
        total_out += np.concatenate([out["linear"]["bias"], out["linear"]["weight"].ravel(), [out["scale"]]])
    assert compressor.codec.residual is not None
    np.testing.assert_allclose(total_out + compressor.codec.residual, total_in, atol=1e-3)


def test_mlx_leaves() -> None:
    mx = pytest.importorskip("mlx.core")
    grads = {"linear": {"weight": mx.ones((2, 3)), "bias": mx.zeros((2,))}}
    out = GradientCompressor(1.0, use_quantization=False).decompress(
        *GradientCompressor(1.0, use_quantization=False).compress(grads))
    np.testing.assert_array_equal(out["linear"]["weight"], np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(out["linear"]["bias"], np.zeros(2, np.float32))


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan")])
def test_rejects_bad_ratios(ratio: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        GradientCompressor(compression_ratio=ratio)


def test_rejects_bad_trees() -> None:
    compressor = GradientCompressor()
    with pytest.raises(ValueError, match="no gradients"):
        compressor.compress({})
    with pytest.raises(ValueError, match="'.'"):
        compressor.compress({"a.b": np.ones(2)})
    with pytest.raises(TypeError, match="list"):
        compressor.compress({"layers": [np.ones(2)]})


def test_decompress_rejects_inconsistent_metadata() -> None:
    compressed, metadata = GradientCompressor(0.5).compress(gradients())
    with pytest.raises(ValueError, match="add up"):
        GradientCompressor.decompress(compressed, {**metadata, "shapes": {"x": [3]}})
    with pytest.raises(ValueError, match="metadata"):
        GradientCompressor.decompress(compressed, {k: v for k, v in metadata.items() if k != "shapes"})
    with pytest.raises(ValueError, match="allowed"):
        GradientCompressor.decompress(compressed, {**metadata, "codec": "gzip"})


@pytest.mark.skipif(not (SNIPPETS / "compression.py").is_file(), reason="seed snippets not beside checkout")
@pytest.mark.network  # the snippet in a process of its own
def test_seed_snippet_runs_as_written() -> None:
    proc = subprocess.run([sys.executable, "compression.py"], cwd=SNIPPETS, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compressed_bytes" in proc.stdout
