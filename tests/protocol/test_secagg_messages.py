"""Secure-aggregation stage messages: round trips and exact shape/dtype checks."""

from __future__ import annotations

import numpy as np
import pytest
from support import wire

from federated.protocol import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    MalformedMessage,
    MaskedInput,
    ProtocolError,
    Roster,
    ShareKeys,
    Shares,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
    encode,
)


def u8(*shape: int) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int64).astype(np.uint8).reshape(shape)


def test_round_trips() -> None:
    msgs = [
        AdvertiseKeys("a", 3, bytes(32), bytes(range(32)), bytes(range(32, 64)), bytes(64)),
        Roster(3, ("a", "b"), u8(2, 32), u8(2, 32), u8(2, 32), u8(2, 64), u8(2, 32)),
        ShareKeys("a", 3, ("b", "c"), u8(2, CIPHERTEXT_BYTES)),
        Shares(3, ("b",), u8(1, CIPHERTEXT_BYTES)),
        MaskedInput("a", 3, np.arange(10, dtype=np.uint32), 0.25),
        UnmaskRequest(3, ("a", "b"), ("c",), bytes(range(32))),
        UnmaskRequest(3, ("a", "b"), ("c",), bytes(range(32)), ("a", "b"), u8(2, 64)),
        ConsistencyCheck(3, ("a", "b"), bytes(range(32))),
        ConsistencySignature("a", 3, bytes(range(64))),
        UnmaskShares("a", 3, ("b",), u8(1, SHARE_BYTES), ("c", "d"), u8(2, SHARE_BYTES)),
    ]
    for msg in msgs:
        out = decode_message(wire(msg.to_frames()))
        assert type(out) is type(msg)
        for name, value in vars(msg).items():
            got = getattr(out, name)
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got, value)
                assert got.dtype == value.dtype
            else:
                assert got == value


@pytest.mark.parametrize("frames", [
    wire(encode(AdvertiseKeys.KIND, {"worker_id": "a", "round_id": 1},
                {"c_pk": u8(31), "s_pk": u8(32), "b_commit": u8(32), "signature": u8(64)})),
    wire(encode(Roster.KIND, {"round_id": 1, "ids": ["a", "b"]},
                {"c_pk": u8(1, 32), "s_pk": u8(2, 32), "identity": u8(2, 32), "signature": u8(2, 64),
                 "b_commit": u8(2, 32)})),
    wire(encode(Roster.KIND, {"round_id": 1, "ids": ["a", "a"]},
                {"c_pk": u8(2, 32), "s_pk": u8(2, 32), "identity": u8(2, 32), "signature": u8(2, 64)})),
    wire(encode(ShareKeys.KIND, {"worker_id": "a", "round_id": 1, "recipients": ["b"]},
                {"ciphertexts": u8(1, CIPHERTEXT_BYTES - 1)})),
    wire(encode(MaskedInput.KIND, {"worker_id": "a", "round_id": 1, "train_s": 0.1},
                {"masked": np.zeros(4, np.int32)})),
    wire(encode(UnmaskShares.KIND, {"worker_id": "a", "round_id": 1, "b_owners": ["b"], "s_owners": ["b"]},
                {"b_shares": u8(1, SHARE_BYTES), "s_shares": u8(1, SHARE_BYTES)})),
    wire(encode(UnmaskRequest.KIND, {"round_id": 1, "survivors": ["a", "bad id!"], "dropped": [],
                                      "session": "00" * 32})),
    wire(encode(UnmaskRequest.KIND, {"round_id": 1, "survivors": ["a"], "dropped": [], "session": "zz"})),
])
def test_malformed_stage_messages_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode_message(frames)


def test_shape_error_names_the_tensor() -> None:
    frames = wire(encode(AdvertiseKeys.KIND, {"worker_id": "a", "round_id": 1},
                         {"c_pk": u8(32), "s_pk": u8(32), "b_commit": u8(32), "signature": u8(63)}))
    with pytest.raises(MalformedMessage, match="signature"):
        decode_message(frames)
