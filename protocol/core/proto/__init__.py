"""Our own .proto files (field numbers from shared/protocol/SPEC.md §6) and their generated code.

The *_pb2.py/.pyi files are generated and committed; regenerate with
`.venv/bin/python tests/tools/gen_protos.py` (the suite checks they are current). Untrusted
bytes are parsed only through `parse`, the boundary that turns protobuf's own decode errors into
our `DecodeError` (SPEC §6; STYLE: foreign exceptions are wrapped where they occur).
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from protocol.core.errors import DecodeError

M = TypeVar("M", bound=Message)


def parse(message_type: type[M], data: bytes) -> M:
    """Parse `data` as `message_type`; any malformed input raises our `DecodeError`."""
    message = message_type()
    try:
        message.ParseFromString(bytes(data))
    except (ProtobufDecodeError, RecursionError, ValueError) as exc:
        raise DecodeError(
            "invalid protobuf", message=message_type.DESCRIPTOR.full_name, reason=str(exc)
        ) from None
    return message
