"""Wire protocol: message kinds, framing, tensor codec, validation and limits. Pure: no sockets."""

from federated.protocol.codec import DTYPES, VERSION, Envelope, decode, encode
from federated.protocol.errors import (
    BadTensor,
    LimitExceeded,
    MalformedMessage,
    ProtocolError,
    UnknownKind,
    UnsupportedVersion,
    WrongStage,
)
from federated.protocol.kinds import Kind
from federated.protocol.limits import CHUNK_BYTES, Limits
from federated.protocol.messages import (
    Bye,
    Error,
    Heartbeat,
    Hello,
    Message,
    Task,
    Update,
    Welcome,
    decode_message,
    validate_worker_id,
)
from federated.protocol.secagg import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    UnmaskRequest,
    UnmaskShares,
)

__all__ = [
    "CHUNK_BYTES",
    "CIPHERTEXT_BYTES",
    "DTYPES",
    "SHARE_BYTES",
    "VERSION",
    "AdvertiseKeys",
    "BadTensor",
    "Bye",
    "Envelope",
    "Error",
    "Heartbeat",
    "Hello",
    "Kind",
    "LimitExceeded",
    "Limits",
    "MalformedMessage",
    "MaskedInput",
    "Message",
    "ProtocolError",
    "Roster",
    "ShareKeys",
    "Shares",
    "Task",
    "UnknownKind",
    "UnmaskRequest",
    "UnmaskShares",
    "UnsupportedVersion",
    "Update",
    "Welcome",
    "WrongStage",
    "decode",
    "decode_message",
    "encode",
    "validate_worker_id",
]
