"""Tests of the typed training-protocol messages (``federated.protocol.messages``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from support import wire

from federated.protocol import (
    VERSION,
    BadTensor,
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    LimitExceeded,
    Limits,
    MalformedMessage,
    Message,
    ProtocolError,
    Task,
    Update,
    Welcome,
    decode_message,
    encode,
    validate_worker_id,
)


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"layers.0.weight": rng.standard_normal((4, 3)).astype(np.float32),
            "layers.0.bias": np.zeros(4, np.float32)}


def assert_same(a: Message, b: Message) -> None:
    """Dataclass equality, with tensors compared by value."""
    assert type(a) is type(b)
    for name, va in vars(a).items():
        vb = getattr(b, name)
        if isinstance(va, dict) and va and all(isinstance(v, np.ndarray) for v in va.values()):
            assert list(va) == list(vb)
            for k in va:
                assert vb[k].dtype == va[k].dtype
                np.testing.assert_array_equal(vb[k], va[k])
        else:
            assert va == vb, name


MESSAGES: list[Message] = [
    Hello("worker-1", 600),
    Hello("w_2.a:b@c", 0, ("bf16", "secagg")),
    Welcome("worker-1", 1.0, 5.0),
    Welcome("x", 0.25, 86400.0),
    Heartbeat("worker-1"),
    Task(3, "train", {"train": {"epochs": 2, "learning_rate": 0.05}, "seed": 7}, weights(), 1, 3, 60.0),
    Task(1, "train", {}, {}, 0, 1, 0.0),
    Update("worker-1", 3, "train", 120, {"loss": 0.5, "accuracy": 0.75, "train_s": 1.25}, weights()),
    Update("worker-1", 0, "train", 1, {}, {}),
    Error("bad_tensor", "update tensors must be float32", 4),
    Error("malformed", ""),
    Bye("worker-1", "shutting down"),
    Bye(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    frames = msg.to_frames()
    assert bytes(frames[0]) == VERSION
    assert bytes(frames[1]) == msg.KIND.value.encode()
    assert_same(decode_message(wire(frames)), msg)


def test_every_training_kind_has_a_message_class() -> None:
    kinds = {type(m).KIND for m in MESSAGES}
    assert kinds == {Kind.HELLO, Kind.WELCOME, Kind.HEARTBEAT, Kind.TASK, Kind.UPDATE, Kind.ERROR, Kind.BYE}


def test_update_with_bfloat16_and_chunked_tensors_decodes() -> None:
    big = np.arange(5000, dtype=np.float32)
    msg = Update("w", 1, "train", 10, {}, {"big": big})
    frames = encode(Kind.UPDATE, {"worker_id": "w", "round_id": 1, "stage": "train", "num_samples": 10,
                                  "metrics": {}}, {"big": big}, chunk_bytes=1024)
    assert len(frames) > 4
    out = decode_message(wire(frames), Limits(max_chunk_bytes=1024))
    assert_same(out, msg)


@pytest.mark.parametrize("kind", ["ADVERTISE_KEYS", "ROSTER", "SHARE_KEYS", "SHARES", "MASKED_INPUT",
                                  "UNMASK_REQUEST", "UNMASK_SHARES"])
def test_secure_aggregation_kinds_with_empty_headers_are_refused(kind: str) -> None:
    with pytest.raises(ProtocolError):
        decode_message([VERSION, kind.encode(), b"{}"])


def test_unknown_extra_header_fields_are_ignored() -> None:
    frames = wire(encode(Kind.HELLO, {"worker_id": "w", "num_samples": 3, "future": {"x": [1]}}))
    assert decode_message(frames) == Hello("w", 3)


# ------------------------------------------------------------------------------------ field validation


def header_of(msg: Message) -> dict[str, Any]:
    head = json.loads(bytes(msg.to_frames()[2]))
    head.pop("tensors")
    return head


def with_header(msg: Message, **changes: Any) -> list[bytes]:
    """``msg`` re-encoded with header fields changed (a value of ``...`` removes the field)."""
    head = header_of(msg)
    for key, value in changes.items():
        if value is ...:
            head.pop(key, None)
        else:
            head[key] = value
    tensors = getattr(msg, "weights", None) or getattr(msg, "update", None) or {}
    return wire(encode(msg.KIND, head, tensors))


REQUIRED = [
    (Hello("w", 1), ["worker_id", "num_samples"]),
    (Welcome("w", 1.0, 5.0), ["worker_id", "heartbeat_interval_s", "heartbeat_timeout_s"]),
    (Heartbeat("w"), ["worker_id"]),
    (MESSAGES[5], ["round_id", "stage", "config", "cohort_index", "cohort_size", "deadline_s"]),
    (MESSAGES[7], ["worker_id", "round_id", "stage", "num_samples"]),
    (Error("c", "m"), ["code", "message"]),
]


@pytest.mark.parametrize("msg, field", [(m, f) for m, fs in REQUIRED for f in fs],
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_missing_required_field(msg: Message, field: str) -> None:
    with pytest.raises(MalformedMessage, match=f"missing header field '{field}'"):
        decode_message(with_header(msg, **{field: ...}))


def test_optional_fields_have_defaults() -> None:
    assert decode_message(with_header(Hello("w", 1, ("a",)), capabilities=...)) == Hello("w", 1)
    assert decode_message(with_header(Error("c", "m", 3), round_id=...)) == Error("c", "m", -1)
    assert decode_message(with_header(Bye("w", "r"), worker_id=..., reason=...)) == Bye()
    upd = decode_message(with_header(MESSAGES[7], metrics=...))
    assert isinstance(upd, Update) and upd.metrics == {}


INT_FIELDS = [
    (Hello("w", 1), "num_samples"),
    (MESSAGES[5], "round_id"),
    (MESSAGES[5], "cohort_index"),
    (MESSAGES[5], "cohort_size"),
    (MESSAGES[7], "round_id"),
    (MESSAGES[7], "num_samples"),
    (Error("c", "m", 1), "round_id"),
]


@pytest.mark.parametrize("msg, field", INT_FIELDS,
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1], {"a": 1}])
def test_integer_fields_refuse_bools_and_other_types(msg: Message, field: str, value: Any) -> None:
    with pytest.raises(MalformedMessage, match=f"'{field}' must be an integer"):
        decode_message(with_header(msg, **{field: value}))


@pytest.mark.parametrize("msg, field, value", [
    (Hello("w", 1), "num_samples", -1),
    (Hello("w", 1), "num_samples", 2**40 + 1),
    (MESSAGES[7], "num_samples", 0),
    (MESSAGES[7], "round_id", -1),
    (MESSAGES[5], "round_id", 2**62 + 1),
    (MESSAGES[5], "cohort_index", 3),  # cohort_size is 3
    (MESSAGES[5], "cohort_index", -1),
    (MESSAGES[5], "cohort_size", 0),
    (Error("c", "m", 1), "round_id", -2),
])
def test_integer_fields_are_range_checked(msg: Message, field: str, value: int) -> None:
    with pytest.raises(MalformedMessage, match=field):
        decode_message(with_header(msg, **{field: value}))


@pytest.mark.parametrize("field, value", [
    ("heartbeat_interval_s", 0), ("heartbeat_interval_s", 3601), ("heartbeat_interval_s", True),
    ("heartbeat_interval_s", "1"), ("heartbeat_timeout_s", -1.0), ("heartbeat_timeout_s", 10**400),
    ("heartbeat_timeout_s", None),
])
def test_welcome_timing_fields_are_checked(field: str, value: Any) -> None:
    with pytest.raises(MalformedMessage, match=field):
        decode_message(with_header(Welcome("w", 1.0, 5.0), **{field: value}))


@pytest.mark.parametrize("value", [-0.5, 86400 * 7 + 1, "60", False, 10**400])
def test_task_deadline_is_checked(value: Any) -> None:
    with pytest.raises(MalformedMessage, match="deadline_s"):
        decode_message(with_header(MESSAGES[5], deadline_s=value))


@pytest.mark.parametrize("stage", ["TRAIN", "", "train!", "x" * 33, "tr ain", 5])
def test_stage_must_be_a_short_lowercase_word(stage: Any) -> None:
    with pytest.raises(ProtocolError, match="stage"):
        decode_message(with_header(MESSAGES[7], stage=stage))


@pytest.mark.parametrize("config", [[], "x", 1, None])
def test_task_config_must_be_an_object(config: Any) -> None:
    with pytest.raises(MalformedMessage, match="config"):
        decode_message(with_header(MESSAGES[5], config=config))


BAD_IDS = ["", "has space", "slash/x", "semi;colon", "new\nline", "é", "x" * 129, "nul\x00", "a*b", 5, None,
           True, ["w"]]


@pytest.mark.parametrize("wid", BAD_IDS, ids=repr)
@pytest.mark.parametrize("msg", [Hello("w", 1), Welcome("w", 1.0, 5.0), Heartbeat("w"), MESSAGES[7]],
                         ids=lambda m: type(m).__name__)
def test_worker_id_with_bad_characters(msg: Message, wid: Any) -> None:
    with pytest.raises(ProtocolError, match="worker_id"):
        decode_message(with_header(msg, worker_id=wid))


@pytest.mark.parametrize("wid", [w for w in BAD_IDS if w != ""], ids=repr)
def test_bye_worker_id_may_be_empty_but_not_bad(wid: Any) -> None:
    with pytest.raises(ProtocolError, match="worker_id"):
        decode_message(with_header(Bye("w"), worker_id=wid))


@pytest.mark.parametrize("wid", ["a", "A-Z_0.9:x@y", "x" * 128, "0123456789abcdef" * 8])
def test_valid_worker_ids(wid: str) -> None:
    assert validate_worker_id(wid) == wid
    assert decode_message(wire(Heartbeat(wid).to_frames())) == Heartbeat(wid)


@pytest.mark.parametrize("wid", BAD_IDS, ids=repr)
def test_validate_worker_id(wid: Any) -> None:
    with pytest.raises(MalformedMessage):
        validate_worker_id(wid)


def test_long_strings_exceed_the_limit() -> None:
    with pytest.raises(LimitExceeded, match="reason"):
        decode_message(with_header(Bye("w"), reason="x" * 257))
    with pytest.raises(LimitExceeded, match="message"):
        decode_message(with_header(Error("c", "m"), message="x" * 257))
    assert decode_message(with_header(Bye("w"), reason="x" * 256)) == Bye("w", "x" * 256)


def test_outgoing_free_text_is_truncated_to_fit() -> None:
    assert decode_message(wire(Error("c", "m" * 1000).to_frames())) == Error("c", "m" * 200)
    assert decode_message(wire(Bye("w", "r" * 1000).to_frames())) == Bye("w", "r" * 200)


@pytest.mark.parametrize("caps", ["x", [1], [None], ["x" * 257], {"a": 1}])
def test_capabilities_must_be_a_list_of_short_strings(caps: Any) -> None:
    with pytest.raises(MalformedMessage, match="capabilities"):
        decode_message(with_header(Hello("w", 1), capabilities=caps))


def test_capabilities_list_length_limit() -> None:
    frames = with_header(Hello("w", 1), capabilities=["a"] * 11)
    with pytest.raises(MalformedMessage, match="capabilities"):
        decode_message(frames, Limits(max_list_length=10))


@pytest.mark.parametrize("metrics", [
    {"loss": True}, {"loss": "0.5"}, {"loss": None}, {"loss": [1.0]}, {"x" * 300: 1.0},
    {"loss": 10**400}, {"loss": -(10**400)},
])
def test_metrics_must_be_finite_numbers(metrics: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(with_header(MESSAGES[7], metrics=metrics))


def test_metrics_must_be_an_object_with_few_entries() -> None:
    with pytest.raises(MalformedMessage, match="metrics"):
        decode_message(with_header(MESSAGES[7], metrics=[1.0]))
    with pytest.raises(LimitExceeded, match="metrics"):
        decode_message(with_header(MESSAGES[7], metrics={f"m{i}": 1.0 for i in range(65)}))
    upd = decode_message(with_header(MESSAGES[7], metrics={"n": 3, "big": 1e300}))
    assert isinstance(upd, Update) and upd.metrics == {"n": 3.0, "big": 1e300}
    assert all(type(v) is float for v in upd.metrics.values())


@pytest.mark.parametrize("msg", [Hello("w", 1), Heartbeat("w"), Bye("w"), Error("c", "m"),
                                 Welcome("w", 1.0, 5.0)], ids=lambda m: type(m).__name__)
def test_kinds_without_tensors_refuse_tensor_frames(msg: Message) -> None:
    head = header_of(msg)
    with pytest.raises(ProtocolError):
        decode_message(wire(encode(msg.KIND, head, {"junk": np.zeros(1000, np.float32)})))


def test_update_with_non_finite_tensor_is_refused() -> None:
    bad = {"w": np.array([0.0, np.nan], np.float32)}
    with pytest.raises(BadTensor):
        decode_message(wire(Update("w", 1, "train", 1, {}, bad).to_frames()))


def test_decode_message_uses_the_given_limits() -> None:
    frames = wire(Task(1, "train", {}, {"w": np.zeros(100, np.float32)}, 0, 1, 1.0).to_frames())
    with pytest.raises(LimitExceeded):
        decode_message(frames, Limits(max_message_bytes=100))
