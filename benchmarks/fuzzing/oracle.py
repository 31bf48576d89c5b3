"""What the broker should do with one fuzz message, decided locally before it is sent: answer it with an
ERROR, take it in silence, or, for a mutation that turned out valid, accept it as a real worker's act (such
a message is not fuzz, and the driver does not send it). The driver counts the answers it expects from
this, which ``errors_expected`` and ``refusals_logged`` are compared with."""

from __future__ import annotations

import numpy as np

from federated.protocol import Bye, Error, Heartbeat, Hello, ProtocolError, Update, decode_message

from .mutations import FAR_FUTURE, Frames

__all__ = ["expectation"]


def expectation(frames: Frames, own: str | None, safe_past: int, model: dict[str, np.ndarray]) -> str:
    """What the broker should do with ``frames`` from a socket whose worker id is ``own``: "reply" (an
    ERROR), "silent" (accepted or ignored without a word), or "unsafe" (it would be a real worker's
    act: a valid HELLO, BYE, or an update it could rightly accept; the fuzzer never sends these).

    ``safe_past`` is the highest round the socket knows to be over for it (an update for a later round
    up to ``FAR_FUTURE`` might be accepted); ``model`` is the job's model, tensor name -> array (an update
    of its names, shapes and float32 could be). A message the decoder refuses (``ProtocolError``) is
    "reply"; nothing is raised."""
    kind = frames[1] if len(frames) > 1 else b""
    if kind not in (b"HELLO", b"BYE", b"ERROR", b"HEARTBEAT", b"UPDATE"):
        return "reply"
    try:
        msg = decode_message(frames)
    except ProtocolError:
        return "reply"
    if isinstance(msg, Hello):
        return "unsafe"
    if own is None:
        return "silent" if isinstance(msg, (Bye, Error)) else "reply"
    if isinstance(msg, Bye):
        return "unsafe" if msg.worker_id in ("", own) else "reply"
    if isinstance(msg, Error):
        return "silent"
    if isinstance(msg, Heartbeat):
        return "silent" if msg.worker_id == own else "reply"
    if isinstance(msg, Update) and msg.worker_id == own and msg.stage == "train" and 0 < msg.round_id:
        compatible = msg.update.keys() == model.keys() and all(
            msg.update[n].shape == w.shape and msg.update[n].dtype == np.float32 for n, w in model.items())
        if compatible and safe_past < msg.round_id < FAR_FUTURE:
            return "unsafe"
    return "reply"
