"""Sans-IO HTTP/1.1 for the dashscale proxy (no sockets, no asyncio), built the way h11 is:
bytes in, events out (``RequestParser``, ``ResponseParser``), bytes to send built from
parsed values (``build_upstream_request``, ``build_client_response_head``). Strict:
llhttp (httptools) validates, the framing is ours; an optional C fast path (``accel``)
takes the plain heads. Design notes, every rejection and its RFC: docs/http11.md.
"""
from . import accel
from .common import (
    CONTINUE_100,
    END,
    FRAMING_CHUNKED,
    FRAMING_CLOSE,
    FRAMING_LENGTH,
    FRAMING_NONE,
    LAST_CHUNK,
    EndOfMessage,
    ProtocolError,
)
from .forward import (
    build_client_response_head,
    build_upstream_request,
    client_response,
    encode_chunk,
    error_response,
)
from .request import Request, RequestParser
from .response import Response, ResponseParser

__all__ = [
    "accel",
    "ProtocolError",
    "Request",
    "Response",
    "EndOfMessage",
    "END",
    "RequestParser",
    "ResponseParser",
    "build_upstream_request",
    "build_client_response_head",
    "client_response",
    "encode_chunk",
    "LAST_CHUNK",
    "CONTINUE_100",
    "error_response",
    "FRAMING_NONE",
    "FRAMING_LENGTH",
    "FRAMING_CHUNKED",
    "FRAMING_CLOSE",
]
