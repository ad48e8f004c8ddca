"""What http11's parsers and builders share: events, errors, framing names, field sets."""

MiB = 1024 * 1024

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

FRAMING_NONE = "none"  # no body (HEAD, 1xx, 204, 304)
FRAMING_LENGTH = "length"  # Content-Length
FRAMING_CHUNKED = "chunked"  # Transfer-Encoding: chunked
FRAMING_CLOSE = "close"  # body runs until the upstream closes

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Hop-by-hop fields (RFC 9110 §7.6.1) and framing: never passed on, in either direction.
_HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ]
)
_RESP_DROP = _HOP_BY_HOP

_NO_TOKENS = frozenset()


class ProtocolError(Exception):
    """A request (or upstream response) that must be refused: answer ``status`` and close."""

    def __init__(self, status: int, reason: str):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.events: list = []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class EndOfMessage:
    """End of the current message (use the :data:`END` singleton)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = EndOfMessage()


def _persistent(version, conn_tokens) -> bool:
    """RFC 9112 §9.3: HTTP/1.1 persists unless ``close``; HTTP/1.0 only with ``keep-alive``."""
    if version == "1.1":
        return b"close" not in conn_tokens
    return b"keep-alive" in conn_tokens


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(400, reason)


def _split_tokens(values) -> list:
    """Comma-separated list elements (lower-cased, OWS-stripped) of several field values."""
    out = []
    for v in values:
        for item in v.split(b","):
            out.append(item.strip(b" \t").lower())
    return out
