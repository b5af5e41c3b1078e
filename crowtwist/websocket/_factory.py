"""``RuleFactory``: the autobahn factory of one WebSocket rule, and the protocols it builds."""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IAddress

from ._autobahn import FAST, fast_factory
from ._extensions import decline_all, deflate_acceptor
from ._protocol import CrowServerProtocol, PublicCrowProtocol, protocol_base
from ._route import RouteHandlers
from ._timers import BucketTimer

__all__ = ["RuleFactory", "build_factory"]


class RuleFactory(WebSocketServerFactory):
    """One autobahn factory per WebSocket rule, carrying the rule to its protocols."""

    noisy = False  # no "Starting factory <... at 0x...>" per rule in the log: the start-up lines say what runs

    def __init__(self, rule: RouteHandlers) -> None:
        # server=None: the 101 carries no Server header naming autobahn's version.
        WebSocketServerFactory.__init__(self, server=None)
        self.rule = rule

    def start(self) -> None:
        """Start the factory, as a listening port would (the leaf shares a Site's port)."""
        super().doStart()  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated

    def stop(self) -> None:
        """Stop the factory; open connections are not touched."""
        super().doStop()  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated

    def build(self, address: IAddress) -> CrowServerProtocol | PublicCrowProtocol:
        """A protocol for one upgraded connection."""
        protocol = self.buildProtocol(address)
        assert isinstance(protocol, (CrowServerProtocol, PublicCrowProtocol))
        protocol.configure(self.rule)
        return protocol


def build_factory(rule: RouteHandlers) -> RuleFactory:
    """The autobahn factory for ``rule``, configured from the rule's and the app's settings."""
    settings = rule.settings
    max_payload = rule.effective_max_payload
    factory = RuleFactory(rule)
    WebSocketServerFactory.setProtocolOptions(
        factory,
        requireMaskedClientFrames=settings.enforce_ws_spec,
        # A protocol error gets a close frame with its code, not a dropped socket.
        failByDrop=False,
        maxMessagePayloadSize=max_payload or 0,
        perMessageCompressionAccept=deflate_acceptor(max_payload) if rule.effective_compression else decline_all,
        echoCloseCodeReason=True,
        closeHandshakeTimeout=settings.close_timeout,
        autoPingInterval=settings.keepalive_interval or 0,
        autoPingTimeout=settings.keepalive_timeout or 0,
        tcpNoDelay=settings.tcp_nodelay,
    )
    base: type[Any] = protocol_base()
    if FAST:
        from twisted.internet import reactor

        # txaio's batched timer rounds deadlines down to whole seconds; ours rounds up.
        options = fast_factory(factory, BucketTimer(reactor.callLater, reactor.seconds))
        factory.protocol = cast(Any, type("RuleServerProtocol", (base,), options))
    else:
        factory.protocol = base
    return factory
