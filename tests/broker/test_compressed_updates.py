"""Compressed updates through the coordinator: decoded before aggregation, bad payloads refused."""

from __future__ import annotations

import numpy as np
import pytest
from support import SecureFakeWorker, run_coordinator_round

from federated.aggregation.vectors import flatten
from federated.broker.coordinator import Coordinator
from federated.broker.planning import compression_seed
from federated.compression import make_codec
from federated.config import BrokerConfig, ConfigError, FederatedConfig, load_config
from federated.crypto.secagg_input import EXTRA_COORDINATES
from federated.protocol import Hello, Task, Update, decode_message

WEIGHTS = {"b": np.zeros(4, np.float32), "w": np.zeros((4, 4), np.float32)}


def _coordinator(spec: str) -> tuple[Coordinator, int, dict]:
    c = Coordinator(FederatedConfig(num_clients=2, clients_per_round=2, num_rounds=1, compression=spec,
                                    broker=BrokerConfig(heartbeat_interval_s=100, heartbeat_timeout_s=1000)), WEIGHTS)
    out = []
    for wid in ("a", "b"):
        out += c.handle(wid.encode(), Hello(wid, 10).to_frames(), 0.0)
    out += c.tick(0.0)
    task = next(m for m in (decode_message(o.frames) for o in out) if isinstance(m, Task))
    return c, task.round_id, task.config


@pytest.mark.parametrize("spec", ["q8", "topk:0.25+q8", "randk:0.5"])
def test_compressed_updates_are_decoded_and_averaged(spec: str) -> None:
    c, rid, config = _coordinator(spec)
    assert config["compression"] == spec and config["compression_seed"] == compression_seed(0, rid)
    update = {k: np.full(v.shape, 0.5, np.float32) for k, v in WEIGHTS.items()}
    for wid in ("a", "b"):
        packed = make_codec(spec, salt=1).encode(flatten(update, np.float32), round_seed=config["compression_seed"])
        c.handle(wid.encode(), Update(wid, rid, "train", 10, {}, packed.tensors, {"meta": packed.meta}).to_frames(), 0.1)
    (record,) = c.history
    assert record.status == "complete"
    expected = {"q8": 0.5, "topk:0.25+q8": None, "randk:0.5": None}[spec]
    if expected is not None:
        np.testing.assert_allclose(c.weights["w"], expected, atol=0.01)
    else:  # sparse codecs keep a subset; what is kept is 0.5
        kept = np.concatenate([c.weights[k].ravel() for k in sorted(c.weights)])
        assert np.all((np.abs(kept - 0.5) < 0.01) | (kept == 0)) and np.any(kept != 0)


def test_a_payload_that_does_not_decode_is_refused() -> None:
    c, rid, _ = _coordinator("q8")
    out = c.handle(b"a", Update("a", rid, "train", 10, {}, {"junk": np.zeros(3, np.int8)}, {"meta": {}}).to_frames(), 0.1)
    assert decode_message(out[0].frames).code == "bad_tensor"
    assert c.round is not None and "a" in c.round.pending


def test_compression_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="compression"):
        load_config(None, {"compression": "zip"})
    with pytest.raises(ConfigError, match="add up"):
        load_config(None, {"compression": "topk:0.1", "secure.enabled": True})
    with pytest.raises(ConfigError, match="save nothing over q8"):
        load_config(None, {"compression": "randk:0.5+q4", "secure.enabled": True})
    with pytest.raises(ConfigError, match="top-k always has error feedback"):
        load_config(None, {"compression": "topk:0.1+ef"})
    # 16-bit sums of 200 workers leave each fewer than 8 bits' worth of levels over [-clip, clip].
    with pytest.raises(ConfigError, match="fewer than 8-bit"):
        load_config(None, {"compression": "q8", "secure.enabled": True, "num_clients": 200,
                           "clients_per_round": 200})
    load_config(None, {"compression": "q8", "secure.enabled": True, "num_clients": 100, "clients_per_round": 100})


@pytest.mark.parametrize(("spec", "kept"), [("q8", 7), ("randk:0.5+q8", 4), ("randk:0.5+ef+q8", 4)])
def test_secure_round_with_quantization_sends_sixteen_bit_words(spec: str, kept: int) -> None:
    from federated.config import SecureConfig

    # Different sample counts: under 16-bit sums every worker weighs 1, so the mean is unweighted.
    workers = [SecureFakeWorker(f"w{i}", 10 + 90 * i, 0.1 * (i + 1)) for i in range(4)]
    config = FederatedConfig(num_clients=4, clients_per_round=4, num_rounds=1, compression=spec,
                             secure=SecureConfig(enabled=True, clip=2.0),
                             broker=BrokerConfig(heartbeat_interval_s=100, heartbeat_timeout_s=1000))
    coordinator, received = run_coordinator_round(workers, config=config)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    masked = [m.masked for m in received if type(m).__name__ == "MaskedInput"]
    assert len(masked) == 4 and all(m.dtype == np.uint16 and m.size == kept + EXTRA_COORDINATES for m in masked)
    for m in masked:  # masked, never a worker's plain encoding
        assert not any(np.array_equal(m, w.encoded.astype(np.uint16)) for w in workers)
    values = np.concatenate([coordinator.weights[k].ravel() for k in sorted(coordinator.weights)])
    assert np.count_nonzero(values) == kept
    # The unweighted mean of 0.1, 0.2, 0.3, 0.4 (the sample-weighted one would be 0.33).
    np.testing.assert_allclose(values[values != 0], 0.25, atol=2e-3)


def test_secure_round_with_shared_random_k_masks_only_the_shared_coordinates() -> None:
    from federated.config import SecureConfig

    workers = [SecureFakeWorker(f"w{i}", 10, 0.25) for i in range(4)]
    config = FederatedConfig(num_clients=4, clients_per_round=4, num_rounds=1, compression="randk:0.5",
                             secure=SecureConfig(enabled=True),
                             broker=BrokerConfig(heartbeat_interval_s=100, heartbeat_timeout_s=1000))
    coordinator, received = run_coordinator_round(workers, config=config)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    masked = [m.masked for m in received if type(m).__name__ == "MaskedInput"]
    total = sum(int(v.size) for v in coordinator.weights.values())  # 7 parameters in the fake model
    assert all(m.size == round(0.5 * total) + EXTRA_COORDINATES for m in masked)
    kept = np.concatenate([coordinator.weights[k].ravel() for k in sorted(coordinator.weights)])
    assert np.count_nonzero(kept) == round(0.5 * total)
    np.testing.assert_allclose(kept[kept != 0], 0.25, atol=0.01)
