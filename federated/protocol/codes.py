"""Names both ends of the protocol agree on, each defined once: ERROR codes and secure-aggregation stages.

Both are ``str`` enums, so a member compares equal to the string that travels (``ErrorCode.BAD_TASK ==
"bad_task"``) and a peer that still sends a bare string interoperates. Use the members in code; never
spell the strings again.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ErrorCode", "Stage"]


class ErrorCode(str, Enum):
    """The ``code`` of an ERROR message: why a message or a task was refused."""

    # Broker -> worker: the message was refused before it changed anything. First the wire format's own
    # refusals (federated.protocol.errors), raised while decoding:
    PROTOCOL = "protocol"  # any other wire-format error
    MALFORMED = "malformed"  # not a well-formed message of its kind
    VERSION = "version"  # a protocol version this side does not speak
    UNKNOWN_KIND = "unknown_kind"  # a message kind this side does not know
    LIMIT = "limit"  # beyond a size or count limit
    # Then the broker's checks of a well-formed message:
    UNKNOWN_WORKER = "unknown_worker"  # no HELLO on this connection yet (or the broker forgot us)
    WRONG_WORKER = "wrong_worker"  # the message claims another worker's id
    IDENTITY_MISMATCH = "identity_mismatch"  # a signing key other than the one pinned or enrolled
    NOT_ENROLLED = "not_enrolled"  # the connection's CURVE key is not (or no longer) enrolled
    WRONG_DIRECTION = "wrong_direction"  # a broker-only message sent to the broker
    WRONG_STAGE = "wrong_stage"  # not expected now (another round or stage: a replay or a straggler)
    BAD_TENSOR = "bad_tensor"  # wrong dtype, shape, NaN or Inf in an update
    SECAGG = "secagg"  # the broker's secure-aggregation machine refused the message
    # Worker -> broker: the worker refused a task or a secure-aggregation step.
    BAD_TASK = "bad_task"  # the TASK asks for something this worker cannot or will not do
    TRAIN_FAILED = "train_failed"  # local training raised
    SECAGG_REFUSED = "secagg_refused"  # a secure-aggregation step against the worker's own floors
    REPLAYED_ROUND = "replayed_round"  # this (run, round) was already run by this worker

    def __str__(self) -> str:
        return self.value


class Stage(str, Enum):
    """Stages of one secure-aggregation round, in order, then its two ends (DESIGN §5)."""

    ADVERTISE = "advertise"  # workers send signed round keys
    SHARE_KEYS = "share_keys"  # workers send encrypted Shamir shares to their neighbours
    MASKED_INPUT = "masked_input"  # workers send their masked inputs
    CONSISTENCY = "consistency"  # survivors sign the survivor set they were told
    UNMASK = "unmask"  # survivors reveal the shares that remove the masks
    DONE = "done"
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """Whether the round still waits for answers at this stage."""
        return self not in (Stage.DONE, Stage.ABORTED)
