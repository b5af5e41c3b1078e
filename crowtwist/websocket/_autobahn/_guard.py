"""The guard: whether the installed autobahn still has what ``FastProtocol`` relies on.

Checked once, at import: every name the fast paths call or override (with
its parameters), the state autobahn's ``_connectionMade`` and
``succeedHandshake`` set (``FastProtocol`` sets the same itself, so a new
flag would be missing), and that connection timers still go through the
factory's ``_batched_timer``.  ``CROWTWIST_PUBLIC_PATHS=autobahn`` (or
``all``) fails it on purpose, for the tests.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from importlib import metadata
from typing import Any
from collections.abc import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflate
from autobahn.websocket.protocol import WebSocketProtocol

from ..._log import log

__all__ = [
    "DEFLATE_PROBLEMS",
    "FAST",
    "INITIAL_STATE",
    "PROBLEMS",
    "deflate_fast",
    "deflate_problems",
    "is_forced_public",
    "problems",
]


# What autobahn's _connectionMade starts every connection with; here they are
# class attributes, so a connection's own dict holds only what changes.
INITIAL_STATE: dict[str, object] = {
    "_perMessageCompress": None,
    "trackedTimings": None,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
}
# Set per connection by _connectionMade, and made here on first use instead
# (or, the last, set only for clients).
_MADE_LAZILY = {
    "trafficStats", "state", "send_queue", "utf8validator", "_transport_details", "serverConnectionDropTimeoutCall"
}
# What succeedHandshake sets; _succeed_plain sets the same for a plain upgrade.
_SUCCEED_SETS = {
    "websocket_protocol_in_use",
    "websocket_extensions_in_use",
    "_perMessageCompress",
    "http_response_data",
    "state",
    "openHandshakeTimeoutCall",
    "inside_message",
    "current_frame",
    "autoPingPendingCall",
}
# (class, name, parameter names or None): what the fast paths call or override.
_P = WebSocketServerProtocol
_REQUIRED: list[tuple[type, str, tuple[str, ...] | None]] = [
    (_P, "_connectionMade", ("self",)),
    (_P, "_connectionLost", ("self", "reason")),
    (_P, "_onOpen", ("self",)),
    (_P, "_dataReceived", ("self", "data")),
    (_P, "_closeConnection", ("self", "abort")),
    (_P, "_parseExtensionsHeader", ("self", "header", "removeQuotes")),
    (_P, "_sendAutoPing", ("self",)),
    (_P, "_cancelAutoPingTimeoutCall", ("self",)),
    (_P, "succeedHandshake", ("self", "res")),
    (_P, "sendData", ("self", "data", "sync", "chopsize")),
    (_P, "sendCloseFrame", ("self", "code", "reasonUtf8", "isReply")),
    (_P, "processControlFrame", ("self",)),
    (_P, "processData", ("self",)),
    (_P, "consumeData", ("self",)),
    (_P, "onFrameData", ("self", "payload")),
    (_P, "onFrameEnd", ("self",)),
    (_P, "onAutoPingTimeout", ("self",)),
    (_P, "dropConnection", ("self", "abort")),
    (_P, "CONFIG_ATTRS", None),
    (_P, "_WS_MAGIC", None),
]


def is_forced_public(component: str) -> bool:
    """Whether ``CROWTWIST_PUBLIC_PATHS`` asks for ``component``'s public paths."""
    wanted = {part.strip() for part in os.environ.get("CROWTWIST_PUBLIC_PATHS", "").split(",")}
    return component in wanted or "all" in wanted


def _assigned(func: Callable[..., Any]) -> set[str]:
    """The ``self.x`` names a method assigns (from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def problems() -> list[str]:
    """What the installed autobahn lacks of what the fast paths rely on (nothing: they may run)."""
    if is_forced_public("autobahn"):
        return ["forced by CROWTWIST_PUBLIC_PATHS"]
    problems = []
    for owner, name, params in _REQUIRED:
        value = getattr(owner, name, None)
        if value is None:
            problems.append(f"{owner.__name__}.{name} is missing")
        elif params is not None and tuple(inspect.signature(value).parameters) != params:
            problems.append(f"{owner.__name__}.{name} takes other parameters")
    if problems:
        return problems
    try:
        # Copied state: a new flag in autobahn's set-up or handshake completion
        # would be missing from ours.
        extra = _assigned(WebSocketProtocol._connectionMade) - set(INITIAL_STATE) - _MADE_LAZILY
        extra -= set(WebSocketServerProtocol.CONFIG_ATTRS)
        if extra:
            problems.append(f"_connectionMade sets {sorted(extra)}")
        extra = _assigned(WebSocketServerProtocol.succeedHandshake) - _SUCCEED_SETS
        if extra:
            problems.append(f"succeedHandshake sets {sorted(extra)}")
        # Every connection timer goes through factory._batched_timer.call_later.
        if "self.factory._batched_timer.call_later(" not in inspect.getsource(WebSocketProtocol._sendAutoPing):
            problems.append("timers no longer go through factory._batched_timer")
    except (OSError, TypeError, SyntaxError) as error:  # no source to check
        problems.append(f"autobahn's source cannot be checked ({error})")
    if not hasattr(WebSocketServerFactory(server=None), "_batched_timer"):
        problems.append("WebSocketServerFactory has no _batched_timer")
    return problems


PROBLEMS = problems()
FAST = not PROBLEMS
if not FAST:
    log.warn(
        "autobahn {version}: {problems}; crowtwist runs on autobahn's public paths (slower)",
        version=metadata.version("autobahn"),
        seam="autobahn",
        problems="; ".join(PROBLEMS),
    )


# What the permessage-deflate fast path reads of an accepted offer: the
# connection's websocket_extensions_in_use (set by succeedHandshake) holds a
# PerMessageDeflate whose constructor stored the negotiated parameters.
DEFLATE_ATTRIBUTES = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


def deflate_problems() -> list[str]:
    """What keeps compressed connections on autobahn's own frame machinery (nothing: crowtwist's codec serves them)."""
    if PROBLEMS:
        return ["autobahn's fast paths are off"]
    if is_forced_public("deflate"):
        return ["forced by CROWTWIST_PUBLIC_PATHS"]
    try:
        missing = set(DEFLATE_ATTRIBUTES) - _assigned(PerMessageDeflate.__init__)
        if missing:
            return [f"PerMessageDeflate no longer sets {sorted(missing)}"]
        if "websocket_extensions_in_use" not in _assigned(WebSocketServerProtocol.succeedHandshake):
            return ["succeedHandshake no longer sets websocket_extensions_in_use"]
    except (OSError, TypeError, SyntaxError) as error:
        return [f"autobahn's source cannot be checked ({error})"]
    return []


DEFLATE_PROBLEMS = deflate_problems()
_deflate_fast = not DEFLATE_PROBLEMS
if PROBLEMS == [] and DEFLATE_PROBLEMS:
    log.warn(
        "autobahn {version}: {problems}; compressed connections take autobahn's frame machinery (slower)",
        version=metadata.version("autobahn"),
        seam="autobahn",
        problems="; ".join(DEFLATE_PROBLEMS),
    )


def deflate_fast() -> bool:
    """Whether crowtwist's own codec serves compressed connections (read per connection, so tests may patch it)."""
    return _deflate_fast
