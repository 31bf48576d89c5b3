"""Size limits enforced on every decoded message, before anything is allocated."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHUNK_BYTES", "Limits"]

#: Tensors larger than this travel in several frames, so no single frame takes long enough on a slow
#: link to outlive the liveness timeout, and so receivers never need one huge contiguous read.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one message. All sizes in bytes; counts are per message.

    The defaults admit models of up to 64M float32 parameters (256 MiB) while keeping a hostile peer from
    making the receiver allocate more than that.
    """

    max_header_bytes: int = 64 * 1024
    max_frames: int = 4096
    max_message_bytes: int = 256 * 1024 * 1024
    max_chunk_bytes: int = CHUNK_BYTES
    max_tensors: int = 1024
    max_tensor_rank: int = 8
    max_tensor_elements: int = 64 * 1024 * 1024
    max_string_length: int = 256
    max_list_length: int = 100_000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first non-positive limit."""
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")

    def max_received_bytes(self) -> int:
        """The most bytes the frames of one acceptable message can add up to: its tensors, its header and
        the version and kind frames. The broker keeps no frame of a message past this."""
        return self.max_message_bytes + self.max_header_bytes + 1024

    def inflight_budget(self) -> int:
        """What one connection may make the broker hold before handing over a message (bytes): one largest
        acceptable message with its wire framing (at most 42 bytes a frame under CURVE), and 1 MiB for the
        small messages (heartbeats) that may queue behind it. See :mod:`federated.broker.inflight`."""
        return self.max_received_bytes() + 42 * self.max_frames + 2**20

    def socket_max_msg_size(self) -> int:
        """Value for ZeroMQ's MAXMSGSIZE: the largest single frame a socket accepts (bytes).

        libzmq applies MAXMSGSIZE per frame, so it is the larger of a chunk and the header, with room
        for framing.
        """
        return max(self.max_chunk_bytes, self.max_header_bytes) + 1024
