"""permessage-deflate (RFC 7692): checking a client's offers and choosing what to accept."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

__all__ = [
    "acceptable_offers",
    "decline_all",
    "deflate_acceptor",
    "extension_error",
    "offered_client_bits",
    "offered_acceptor",
    "parse_offers",
]

PERMESSAGE_DEFLATE = "permessage-deflate"


def deflate_acceptor(
    max_payload: int | None, client_bits: int = 0, context_takeover: bool = True
) -> Callable[[Sequence[object]], object]:
    """Accept the first permessage-deflate offer, agreeing to what the client offered.

    With ``context_takeover`` (the default, as aiohttp and websockets do) the
    client keeps its compression context from message to message, which
    compresses repetitive traffic several times better and costs the client
    no new deflater per message; our inflater then keeps its window (32 KiB
    at 15 bits) between messages.  Without it, the client is asked for
    ``client_no_context_takeover`` (any client must accept that, RFC 7692
    7.1.1.2) and our inflater is dropped after each message: the memory-saving
    mode (see docs/limits.md).  A ``server_no_context_takeover`` or
    ``server_max_window_bits`` the client asks for is granted, and a
    ``client_max_window_bits`` value it offered is confirmed (7.1.2).
    """

    def accept(offers: Sequence[object]) -> object:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(
                    offer,
                    request_no_context_takeover=not context_takeover and bool(offer.accept_no_context_takeover),
                    request_max_window_bits=client_bits if offer.accept_max_window_bits else 0,
                    max_message_size=max_payload,
                )
        return None

    return accept


def decline_all(offers: Sequence[object]) -> None:
    return None


# Sec-WebSocket-Extensions (RFC 6455 section 9.1, with RFC 9110's lists and
# whitespace), as the websockets library parses it.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_QUOTED = re.compile(r'"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e])*)"')
_UNQUOTE = re.compile(r"\\(.)")
_OWS = re.compile(r"[ \t]*")

Offer = tuple[str, list[tuple[str, str | None]]]
"""An extension offer: its name and its parameters (``None``: no value), in order."""


class _Reader:
    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = _OWS.match(text).end()  # type: ignore[union-attr]  # matches the empty string

    def skip(self) -> None:
        self.pos = _OWS.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def token(self, what: str) -> str:
        found = _TOKEN.match(self.text, self.pos)
        if found is None:
            raise ValueError(f"expected {what} at {self.pos}")
        self.pos = found.end()
        self.skip()
        return found.group()

    def value(self) -> str:
        if self.peek() != '"':
            return self.token("a parameter value")
        found = _QUOTED.match(self.text, self.pos)
        if found is None:
            raise ValueError(f"unterminated quoted string at {self.pos}")
        value = _UNQUOTE.sub(r"\1", found.group(1))
        # RFC 6455 section 9.1: the unquoted value must be a token too.
        if _TOKEN.fullmatch(value) is None:
            raise ValueError(f"quoted value {value!r} is not a token")
        self.pos = found.end()
        self.skip()
        return value


def parse_offers(header: str) -> list[Offer]:
    """The offers of a ``Sec-WebSocket-Extensions`` value; ``ValueError`` if it is malformed.

    Empty list elements are skipped, as RFC 9110 section 5.6.1 asks.
    """
    reader = _Reader(header)
    offers: list[Offer] = []
    while True:
        while reader.peek() == ",":
            reader.pos += 1
            reader.skip()
        if reader.pos == len(header):
            break
        name = reader.token("an extension name")
        params: list[tuple[str, str | None]] = []
        while reader.peek() == ";":
            reader.pos += 1
            reader.skip()
            param = reader.token("a parameter name")
            value: str | None = None
            if reader.peek() == "=":
                reader.pos += 1
                reader.skip()
                value = reader.value()
            params.append((param, value))
        offers.append((name, params))
        if reader.pos < len(header) and reader.peek() != ",":
            raise ValueError(f"expected ',' or ';' at {reader.pos}")
    if not offers:
        raise ValueError("no extension offered")
    return offers


def extension_error(header: str) -> str | None:
    """Why a ``Sec-WebSocket-Extensions`` value is malformed, or ``None`` if it is not.

    Only the syntax counts: an offer the server cannot take is declined, not
    refused (RFC 7692 section 5).  Checked before the upgrade so that a broken
    header gets a proper 400 from twisted.web.
    """
    try:
        parse_offers(header)
    except ValueError as error:
        return str(error)
    return None


_SERVER_BITS = re.compile(r"9|1[0-5]")  # zlib cannot deflate with a 256-byte window
_CLIENT_BITS = re.compile(r"9|1[0-5]")  # autobahn's offer parser takes no 8 either


def _deflate_params(params: list[tuple[str, str | None]]) -> list[str] | None:
    """A permessage-deflate offer's parameters in canonical form, or ``None`` to decline it.

    RFC 7692 section 5: an unknown parameter, an invalid value, a repeated
    parameter, or a configuration we do not support declines the offer.
    """
    seen: set[str] = set()
    canonical: list[str] = []
    for name, value in params:
        name = name.lower()
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            canonical.append(name)
        elif name == "server_max_window_bits":
            if value is None or _SERVER_BITS.fullmatch(value) is None:
                return None
            canonical.append(f"{name}={value}")
        elif name == "client_max_window_bits":
            if value is None:
                canonical.append(name)
            elif _CLIENT_BITS.fullmatch(value) is None:
                return None
            else:
                canonical.append(f"{name}={value}")
        else:
            return None
    return canonical


def acceptable_offers(header: str) -> str:
    """The permessage-deflate offers of a well-formed ``header`` that we can take, as a header value.

    Other extensions and declined offers are left out, so what autobahn's
    handshake reads never fails it; the acceptor takes the first offer left.
    """
    kept: list[str] = []
    for name, params in parse_offers(header):
        if name.lower() != PERMESSAGE_DEFLATE:
            continue
        canonical = _deflate_params(params)
        if canonical is not None:
            kept.append("; ".join([PERMESSAGE_DEFLATE, *canonical]))
    return ", ".join(kept)


def offered_client_bits(extensions: Sequence[tuple[str, dict[str, list[object]]]]) -> int:
    for name, params in extensions:
        if name == "permessage-deflate":
            value = params.get("client_max_window_bits", [True])[0]
            if isinstance(value, str) and value.isdigit() and 9 <= int(value) <= 15:
                return int(value)
            return 0
    return 0


def offered_acceptor(
    extensions: Sequence[tuple[str, dict[str, list[object]]]], max_payload: int | None, context_takeover: bool = True
) -> Callable[[Sequence[object]], object]:
    """``deflate_acceptor`` for a request's parsed ``Sec-WebSocket-Extensions`` (autobahn's form).

    A client that offers ``client_no_context_takeover`` has said it will
    compress each message alone anyway; agreeing costs no ratio and lets our
    inflater go between messages, so it is agreed whatever ``context_takeover`` says.
    """
    hinted = False
    for name, params in extensions:
        if name == PERMESSAGE_DEFLATE:
            hinted = "client_no_context_takeover" in params
            break
    return deflate_acceptor(max_payload, offered_client_bits(extensions), context_takeover and not hinted)
