"""permessage-deflate (RFC 7692): checking a client's offers and choosing what to accept."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Sequence

from autobahn.websocket.compress import (
    PERMESSAGE_COMPRESSION_EXTENSION,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.twisted.websocket import WebSocketServerProtocol

__all__ = ["decline_all", "deflate_acceptor", "extension_error", "offered_client_bits"]


def deflate_acceptor(
    max_payload: int | None, client_bits: int = 0
) -> Callable[[Sequence[object]], object]:
    """Accept the first permessage-deflate offer, agreeing to what the client offered.

    The client's ``client_no_context_takeover`` is taken up (our inflater can
    then forget each message, which saves memory), and a ``client_max_window_bits``
    value it offered is confirmed, as RFC 7692 section 7.1.2 allows.
    """

    def accept(offers: Sequence[object]) -> object:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(
                    offer,
                    request_no_context_takeover=bool(offer.accept_no_context_takeover),
                    request_max_window_bits=client_bits if offer.accept_max_window_bits else 0,
                    max_message_size=max_payload,
                )
        return None

    return accept


def decline_all(offers: Sequence[object]) -> None:
    return None


_parser: WebSocketServerProtocol | None = None


def extension_error(header: str) -> str | None:
    """Why a ``Sec-WebSocket-Extensions`` offer is malformed, or ``None`` if it is not.

    Checked before the upgrade so that a bad offer gets a proper 400 from
    twisted.web; autobahn would only find it after taking the transport over.
    """
    global _parser
    if _parser is None:
        _parser = WebSocketServerProtocol()
    try:
        offers = WebSocketServerProtocol._parseExtensionsHeader(_parser, header)
        for name, params in offers:
            extension = PERMESSAGE_COMPRESSION_EXTENSION.get(name)
            if extension is not None:
                offer_type: Any = extension["Offer"]
                offer_type.parse(params)
    except Exception as error:
        return str(error) or type(error).__name__
    return None


def offered_client_bits(extensions: Sequence[tuple[str, dict[str, list[object]]]]) -> int:
    for name, params in extensions:
        if name == "permessage-deflate":
            value = params.get("client_max_window_bits", [True])[0]
            if isinstance(value, str) and value.isdigit() and 9 <= int(value) <= 15:
                return int(value)
            return 0
    return 0
