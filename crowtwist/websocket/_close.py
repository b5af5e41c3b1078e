"""Close codes (RFC 6455 section 7.4, the IANA registry) and close frame payloads.

Sans-I/O: ``parse_close`` turns a received close frame's payload into its code
and reason, or says which code the connection must be failed with.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode", "CloseFrameError", "failure_message", "is_receivable", "is_sendable", "parse_close"]


class CloseCode(IntEnum):
    """Close codes, with Crow's ``CloseStatusCode`` names."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015

    # Crow's names (crow::websocket::CloseStatusCode).
    NormalClosure = 1000
    EndpointGoingAway = 1001
    ProtocolError = 1002
    UnacceptableData = 1003
    NoStatusCodePresent = 1005
    ClosedAbnormally = 1006
    InvalidData = 1007
    InconsistentData = 1007  # (Crow's own spelling; InvalidData is kept for code written against ours)
    PolicyViolated = 1008
    MessageTooLarge = 1009
    MessageTooBig = 1009  # (Crow's own spelling, likewise)
    ExtensionsNotNegotiated = 1010
    UnexpectedCondition = 1011
    ServiceRestart = 1012
    TryAgainLater = 1013
    BadGateway = 1014
    TLSHandshakeFailure = 1015


# Registered codes an endpoint may put in a close frame: 1004 is reserved, and
# 1005, 1006 and 1015 only ever describe a close that had no such frame.
_ON_THE_WIRE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def is_receivable(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (registered ones, and 3000-4999)."""
    return code in _ON_THE_WIRE or 3000 <= code <= 4999


def is_sendable(code: int) -> bool:
    """Whether the application may close with ``code``.

    1010 is a client's code (the server did not agree to an extension) but is
    allowed, as Crow allows it.
    """
    return is_receivable(code)


class CloseFrameError(Exception):
    """A close frame that breaks the protocol; the connection is failed with ``code``."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code (``None`` for an empty frame) and reason of a received close frame's payload.

    Raises ``CloseFrameError`` with 1002 for a one-byte payload or a code no
    peer may send, and with 1007 for a reason that is not UTF-8.
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_receivable(code):
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise CloseFrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason


# Crow's own words for the failures its users match on; others keep autobahn's.
_CROW_MESSAGES = {"unmasked client-to-server frame": "Client connection not masked."}


def failure_message(reason: str, code: int | None) -> str:
    """What ``onerror`` is told when autobahn fails a connection with ``code`` and ``reason``."""
    return _CROW_MESSAGES.get(reason, reason or f"connection failed with {code}")
