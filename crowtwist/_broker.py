"""``RedisBroker``: an app's rooms and broadcasts across processes and machines, through Redis pub/sub.

The broker is the hub's relay (``websocket._broadcast.Relay``).  Each process
keeps two connections to Redis, made with txredisapi (Twisted-native, so it
runs on whichever reactor twistd chose): one subscribed to the channels this
process has members in, one that publishes.  A message goes out once, with
PUBLISH, and comes back to every subscribed process, this one included,
which delivers it to its members: so each connection gets it exactly once,
and one publisher's messages arrive in the order it sent them (one
connection to Redis, and Redis keeps the order of a connection's commands).

A connection counts once Redis has answered a PING on it (after AUTH, and
after the TLS handshake for ``rediss://``); the broker is up once both do
and Redis has confirmed the subscriptions.  When Redis goes away, both
connections are dropped together (so nothing published before the outage
arrives after what was delivered locally during it), the outage is logged
once, and both are made again with backoff; until then ``publish`` answers
False and the hub delivers in this process only: what was published
meanwhile does not reach the other processes, ever (at most once, as Redis
pub/sub itself).  Connections to clients stay open; when the subscriber is
back it subscribes to every channel again, and joins made while it does are
subscribed too.

Redis can also stop answering without closing (a stopped process, a
partition that drops packets): a PUBLISH unanswered for 2 s, more than
64 MiB of publishes waiting in the connection for 0.5 s, or a PING
unanswered for 3 s (each connection is PINGed every 5 s) counts as Redis
going away.  Redis refusing SUBSCRIBE (an ACL without channel permissions:
NOPERM) does too, logged as an error; a refused PUBLISH is logged as an
error, delivered here, and so are the publishes of the next 10 s, in order.

Redis pub/sub ignores the database number, so it goes into the channel
names instead: apps on ``/0`` and ``/1`` of one server do not hear each other.
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from ._log import log

__all__ = ["BrokerURL", "RedisBroker", "parse_broker_url"]


# Redis's own default port.
_REDIS_PORT = 6379
# Reconnection backoff: the first retry soon (a restart is short), then up to
# 10 s apart (txredisapi's own ceiling), growing by e each time.
_FIRST_RETRY = 0.2
_LAST_RETRY = 10.0
# Channels named in one SUBSCRIBE when subscribing again after an outage.
_SUBSCRIBE_BATCH = 512
# Redis can stop answering without closing (a stopped process, a partition
# that drops packets): each connection is PINGed this often, and dropped
# (then made again) when the answer is later than _HEALTH_TIMEOUT.
_HEALTH_INTERVAL = 5.0
_HEALTH_TIMEOUT = 3.0
# A PUBLISH unanswered this long means Redis is not there (its answers take
# well under a millisecond; our own busy reactor may delay reading them a
# little): noticed at the next publish, sooner than a PING would.
_STALL = 2.0
# Bytes of publishes waiting in the connection to Redis (its transport paused
# us) which, once the oldest unanswered PUBLISH is _SLOW old, count as Redis
# not keeping up: a healthy Redis takes a burst of this size in milliseconds,
# and the age keeps a burst written in one turn from counting.
_MAX_HELD = 64 * 1024 * 1024
_SLOW = 0.5
# A refused PUBLISH (an ACL without the permission) is tried again this long
# after; meanwhile publishes are delivered in this process.
_REFUSED_RETRY = 10.0


@dataclass(frozen=True)
class BrokerURL:
    """What a ``redis://`` or ``rediss://`` URL says."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    ca_certs: str | None
    verify: bool

    def __str__(self) -> str:
        """The URL without its password (for logs)."""
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"


def parse_broker_url(url: str) -> BrokerURL:
    """The parts of ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).

    ``rediss://`` takes ``?ssl_ca_certs=FILE`` (a CA bundle to trust instead
    of the system's) and ``?ssl_cert_reqs=none`` (no verification), as
    redis-py's URLs do.  Anything else raises ``ValueError`` saying what.
    """
    if not isinstance(url, str):
        raise TypeError(f"a broker URL is a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"broker URL {url!r}: the scheme is redis:// or rediss://")
    try:
        port = parts.port or _REDIS_PORT
    except ValueError:
        raise ValueError(f"broker URL {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"broker URL {url!r}: the path is a database number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"ssl_ca_certs", "ssl_cert_reqs", "db"}
    if unknown:
        raise ValueError(f"broker URL {url!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    db = int(query["db"][-1]) if "db" in query and query["db"][-1].isdigit() else int(path or 0)
    reqs = query.get("ssl_cert_reqs", ["required"])[-1].lower()
    if reqs not in ("required", "none"):
        raise ValueError(f"broker URL {url!r}: ssl_cert_reqs is 'required' or 'none', not {reqs!r}")
    tls = parts.scheme == "rediss"
    if not tls and ("ssl_ca_certs" in query or "ssl_cert_reqs" in query):
        raise ValueError(f"broker URL {url!r}: ssl_* parameters need rediss://")
    return BrokerURL(
        host=parts.hostname,
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
        ca_certs=query["ssl_ca_certs"][-1] if "ssl_ca_certs" in query else None,
        verify=reqs == "required",
    )


def check_client_installed() -> None:
    """Raise ``ImportError`` saying how to install the Redis client when it is missing."""
    if importlib.util.find_spec("txredisapi") is None:
        raise ImportError("the Redis broker needs txredisapi: pip install 'crowtwist[redis]'")


class RedisBroker:
    """The relay between an app's hub and Redis (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        deliver: Callable[[str, bytes], object],
        channels: Callable[[], list[str]],
    ) -> None:
        """``deliver(channel, data)`` takes what Redis brings; ``channels()`` is what to subscribe to."""
        self.url = parse_broker_url(url)
        check_client_installed()
        self._deliver = deliver
        self._channels = channels
        self._prefix = f"crowtwist:{self.url.db}:"
        self._publisher: Any = None
        self._subscribing: Any = None
        """The subscriber connection once it answered: joins are subscribed on it from then on."""
        self._subscriber: Any = None
        """The same, once Redis confirmed every subscription it had at the start."""
        self._links: list[_Link] = []
        self._inflight: deque[float] = deque()
        self._refused_until = 0.0
        self._publish_refusal_said = False
        self._behind: list[tuple[str, bytes]] = []
        self._flow = _Flow()
        self._warned = False
        self._refused_auth = False
        self._up_waiters: list[Deferred[None]] = []
        self._down_since: float | None = None
        self._ever_up = False
        self._running = False
        self._response_error: type[Exception] = Exception
        self.published = 0
        """Messages handed to Redis by this process."""
        self.received = 0
        """Messages Redis brought to this process."""
        self.dropped = 0
        """Messages published while Redis was away (or refused by it): delivered in this process only."""
        self.unconfirmed = 0
        """Messages handed to Redis whose connection was lost before it answered (delivered or not)."""

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url} {'up' if self.up else 'down'}>"

    @property
    def up(self) -> bool:
        """Whether publishing goes through Redis: both connections answer, the subscriptions are confirmed."""
        return self._publisher is not None and self._subscriber is not None

    def when_up(self) -> Deferred[None]:
        """A Deferred that fires once the broker is ``up`` (at once if it is)."""
        if self.up:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._up_waiters.append(waiter)
        return waiter

    # The hub's relay.

    def publish(self, channel: str, data: bytes) -> bool:
        """PUBLISH ``data`` on ``channel``; False while Redis is away (the hub delivers locally)."""
        publisher = self._publisher
        if publisher is None or self._subscriber is None:
            self.dropped += 1
            return False
        inflight = self._inflight
        now = time.monotonic()
        if self._refused_until > now:
            if inflight:
                # Refusals are still coming back for what was sent before: after them, in order.
                self._behind.append((channel, data))
                return True
            self.dropped += 1
            return False
        waited = now - inflight[0] if inflight else 0.0
        if waited > _STALL:
            self._gone(f"not answering (a PUBLISH unanswered for {waited:.1f} s)")
            self.dropped += 1
            return False
        flow = self._flow
        if flow.paused:
            flow.held += len(data)
            if flow.held > _MAX_HELD and waited > _SLOW:
                self._gone(f"not taking publishes ({flow.held} bytes waiting for {waited:.1f} s)")
                self.dropped += 1
                return False
        inflight.append(now)
        self.published += 1
        publisher.publish(self._name(channel), data).addBoth(self._published, publisher, channel, data)
        return True

    def _published(self, result: Any, publisher: Any, channel: str, data: bytes) -> None:
        if publisher is not self._publisher:
            self.unconfirmed += 1  # (its connection is gone: Redis may or may not have had it)
            return
        if self._inflight:
            self._inflight.popleft()
        error = self._refusal(result)
        if error is not None:
            # Refused, so delivered nowhere: here, at least, as while Redis is away.
            # Subscribing may still be allowed: the connections stay, publishes are
            # delivered here until the refusal is tried again.
            self.dropped += 1
            self._deliver(channel, data)
            if self._refused_until <= time.monotonic():
                self._refused_until = time.monotonic() + _REFUSED_RETRY
                if not self._publish_refusal_said:
                    self._publish_refusal_said = True
                    log.error(
                        "Redis broker {url} refused PUBLISH ({error}); publishes reach this process's"
                        " connections only (tried again every {retry:.0f} s)",
                        url=str(self.url),
                        error=error,
                        retry=_REFUSED_RETRY,
                    )
        elif isinstance(result, Failure):
            self.unconfirmed += 1
        else:
            self._refused_until = 0.0
            self._publish_refusal_said = False
        if not self._inflight:
            self._deliver_behind()

    def _deliver_behind(self) -> None:
        """Deliver here what waited behind refused PUBLISHes (nothing is in flight before it any more)."""
        behind, self._behind = self._behind, []
        for channel, data in behind:
            self.dropped += 1
            self._deliver(channel, data)

    def subscribe(self, channel: str) -> None:
        """This process has members in ``channel`` now."""
        subscriber = self._subscribing
        if subscriber is not None:
            subscriber.subscribe([self._name(channel)]).addBoth(self._check_subscribe, subscriber)

    def unsubscribe(self, channel: str) -> None:
        """This process has no members in ``channel`` any more."""
        subscriber = self._subscribing
        if subscriber is not None:
            subscriber.unsubscribe([self._name(channel)]).addErrback(lambda _: None)  # (gone: nothing to undo)

    def _check_subscribe(self, result: Any, subscriber: Any) -> None:
        error = self._refusal(result)
        if error is not None and subscriber is self._subscribing:
            self._gone(f"refused SUBSCRIBE ({error})", refused=True)

    def _refusal(self, result: Any) -> str | None:
        """Redis's error reply in ``result`` (a value or a Failure, as txredisapi gives them), if any."""
        if isinstance(result, Failure):
            result = result.value
        if isinstance(result, self._response_error):
            return str(result)
        return None

    def _name(self, channel: str) -> bytes:
        return (self._prefix + channel).encode("utf-8")

    # Redis's side.

    def start(self) -> None:
        """Connect (and keep reconnecting) to Redis."""
        import txredisapi  # imports the reactor: only once one is installed

        from twisted.internet import reactor

        if self._running:
            return
        self._running = True
        self._down_since = time.monotonic()
        self._response_error = txredisapi.ResponseError
        broker = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]  # untyped base
            def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
                if self is broker._subscribing:  # (not a connection being dropped)
                    broker._received(channel, message)

        endpoint = _endpoint(reactor, self.url)
        self._links = [
            _Link(self, txredisapi, Subscriber, endpoint, reactor, subscriber=True),
            _Link(self, txredisapi, txredisapi.RedisProtocol, endpoint, reactor, subscriber=False),
        ]
        for link in self._links:
            link.connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close both connections."""
        self._running = False
        links, self._links = self._links, []
        self._publisher = self._subscriber = self._subscribing = None
        return DeferredList([link.stop() for link in links]).addCallback(lambda _: None)

    def ready(self, protocol: Any, subscriber: bool) -> None:
        """``protocol`` answered a PING: the subscriber subscribes to every channel, the publisher is ready."""
        if subscriber:
            self._subscribing = protocol
            channels = [self._name(channel) for channel in self._channels()]
            confirmed = [
                protocol.subscribe(channels[start : start + _SUBSCRIBE_BATCH])
                for start in range(0, len(channels), _SUBSCRIBE_BATCH)
            ]
            DeferredList(confirmed, consumeErrors=True).addCallback(self._subscribed, protocol)
        else:
            self._publisher = protocol
            self._inflight.clear()
            self._flow = _Flow()
            protocol.transport.registerProducer(self._flow, True)
            self._maybe_up()

    def _subscribed(self, results: list[tuple[bool, Any]], protocol: Any) -> None:
        if protocol is not self._subscribing or not self._running:
            return
        for _, result in results:
            error = self._refusal(result)
            if error is not None:
                self._gone(f"refused SUBSCRIBE ({error})", refused=True)
                return
        if all(ok for ok, _ in results):
            self._subscriber = protocol
            self._maybe_up()

    def _maybe_up(self) -> None:
        if not self.up:
            return
        if self._down_since is not None:
            outage = time.monotonic() - self._down_since
            self._down_since = None
            if self._ever_up:
                log.info(
                    "Redis broker {url} is back after {outage:.1f} s; subscribed again to {count} channel(s)",
                    url=str(self.url),
                    outage=outage,
                    count=len(self._channels()),
                )
            else:
                log.info("Redis broker {url} connected", url=str(self.url))
            self._ever_up = True
            self._warned = False
        waiters = self._up_waiters
        self._up_waiters = []
        for waiter in waiters:
            waiter.callback(None)

    def lost(self, protocol: Any) -> None:
        """``protocol``'s connection closed: Redis is away until both connections are back."""
        if protocol is self._subscribing or protocol is self._publisher:
            self._gone("lost")
        elif self._running and not self._refused_auth:
            # Closed before it answered (or one we dropped ourselves, when this was said already).
            self._warn_down("closed the connection before answering")

    def _gone(self, what: str, refused: bool = False) -> None:
        """Redis is away (or as good as): deliver here only, drop both connections, make them again."""
        was_up = self.up
        self._publisher = self._subscriber = self._subscribing = None
        self._inflight.clear()
        self._deliver_behind()
        if not self._running:
            return
        if was_up:
            self._down_since = time.monotonic()
        self._warn_down(what, refused)
        for link in self._links:
            link.drop()

    def failed(self, why: str) -> None:
        """A connection attempt failed: said once per outage (and once before the first success)."""
        if self._running:
            self._warn_down(f"unreachable ({why})")

    def refused_auth(self, why: str) -> None:
        """Redis refused our AUTH: retrying would not help.  Said once."""
        if not self._refused_auth:
            self._refused_auth = True
            log.error("Redis broker {url}: {why}; not reconnecting", url=str(self.url), why=why)

    def _warn_down(self, what: str, refused: bool = False) -> None:
        if self._warned:
            return
        self._warned = True
        (log.error if refused else log.warn)(
            "Redis broker {url} {what}; reconnecting. Until it is back, broadcasts and rooms"
            " reach this process's connections only (what is published meanwhile is not delivered elsewhere)",
            url=str(self.url),
            what=what,
        )

    def _received(self, channel: bytes, message: bytes) -> None:
        name = channel.decode("utf-8", "replace")
        if not name.startswith(self._prefix):
            return
        self.received += 1
        self._deliver(name[len(self._prefix) :], message)


@implementer(IPushProducer)
class _Flow:
    """Whether the connection that publishes is taking what we write (its transport's say)."""

    def __init__(self) -> None:
        self.paused = False
        self.held = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.held = 0

    def stopProducing(self) -> None:
        self.paused = False


class _Link:
    """One connection to Redis, made again with backoff whenever it fails or closes.

    txredisapi's protocols do the talking (RESP, AUTH); the reconnecting is
    ours rather than its ``ClientService`` pool's, which logs every retry:
    an outage is logged once here.  The backoff grows with each attempt and
    starts again only once a connection has answered a health PING, so a
    Redis (or a proxy in front of one) that accepts and closes at once is
    not hammered.
    """

    def __init__(
        self, broker: RedisBroker, txredisapi: Any, protocol: Any, endpoint: Any, reactor: Any, subscriber: bool
    ) -> None:
        self._broker = broker
        self._subscriber = subscriber
        self._endpoint = endpoint
        self._reactor = reactor
        self._attempt = 0
        self._pending: Any = None
        self._retry: Any = None
        self._protocol: Any = None
        self._stopping = False
        self._gone: Deferred[None] | None = None
        self._health: LoopingCall | None = None
        self._pinging = False
        link = self
        url = broker.url

        class Linked(protocol):  # type: ignore[misc]  # untyped base
            def connectionLost(self, why: Any) -> None:
                try:
                    super().connectionLost(why)
                finally:
                    link._closed(self)

        class Factory(txredisapi.RedisFactory):  # type: ignore[misc]  # untyped base
            def buildProtocol(self, addr: Any) -> Any:
                built = Linked(None, password=url.password, username=url.username)
                built.factory = self
                built.whenConnected().addCallback(link._authenticated)
                return built

            def stopTrying(self) -> None:
                # txredisapi's protocol calls this when AUTH is refused.
                link._stopping = True

            def connectionError(self, why: str) -> None:
                broker.refused_auth(why)

        # (isLazy=False: txredisapi would log a refused AUTH itself too)
        self._factory = Factory(None, None, 1, isLazy=False, charset=None)
        self._factory.deferred.addErrback(lambda _: None)  # (its pool's; not used)

    def connect(self) -> None:
        self._retry = None
        if self._stopping:
            return
        self._attempt += 1
        self._pending = self._endpoint.connect(self._factory)
        self._pending.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._pending = None
        self._protocol = protocol

    def _authenticated(self, protocol: Any) -> None:
        if self._stopping:
            protocol.transport.loseConnection()
            return

        def answered(_: object) -> None:
            if protocol.transport is None or not protocol.connected:
                return
            self._health = LoopingCall(self._check, protocol)
            self._health.clock = self._reactor
            self._health.start(_HEALTH_INTERVAL, now=False)
            self._broker.ready(protocol, self._subscriber)

        # Counted only once Redis answers: after AUTH, and after TLS's handshake.
        self._ping(protocol, answered)

    def _ping(self, protocol: Any, answered: Callable[[object], None]) -> None:
        self._pinging = True

        def reply(result: object) -> None:
            self._pinging = False
            error = self._broker._refusal(result)
            if error is not None:
                # NOAUTH (a password is needed), LOADING, ...: say what Redis said.
                self._broker._warn_down(f"refused PING ({error})", refused=True)
            if error is not None or isinstance(result, Failure):
                self._abort(protocol)
            else:
                answered(result)

        protocol.ping().addTimeout(_HEALTH_TIMEOUT, self._reactor).addBoth(reply)

    def _check(self, protocol: Any) -> None:
        if not self._pinging:
            self._ping(protocol, self._healthy)

    def _healthy(self, _: object) -> None:
        # A connection that lived a health interval and answers: the backoff starts again.
        self._attempt = 0

    def _abort(self, protocol: Any) -> None:
        if protocol.transport is not None:
            # No answer in time: as good as gone, and a dead TCP peer may never say so.
            protocol.transport.abortConnection()

    def drop(self) -> None:
        """The broker counts Redis as gone: drop this connection (it is made again with backoff)."""
        if self._protocol is not None:
            self._abort(self._protocol)

    def _failed(self, failure: Any) -> None:
        self._pending = None
        if self._stopping:
            return
        self._broker.failed(failure.getErrorMessage())
        self._schedule()

    def _closed(self, protocol: Any) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._health is not None and self._health.running:
            self._health.stop()
        self._health = None
        self._pinging = False
        self._broker.lost(protocol)
        if self._gone is not None:
            self._gone.callback(None)
            self._gone = None
        elif not self._stopping:
            self._schedule()

    def _schedule(self) -> None:
        if self._retry is not None:
            return
        # e-fold backoff from _FIRST_RETRY to _LAST_RETRY, with some jitter so
        # that many workers do not all come back in the same instant.
        delay = min(_FIRST_RETRY * math.e ** max(self._attempt - 1, 0), _LAST_RETRY) * random.uniform(0.85, 1.15)
        self._retry = self._reactor.callLater(delay, self.connect)

    def stop(self) -> Deferred[None]:
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._protocol is None or self._protocol.transport is None:
            return succeed(None)
        self._gone = Deferred()
        transport = self._protocol.transport
        # A transport with a producer (the publisher's flow) waits for it to
        # go before it closes; TLS's does, at least.
        transport.unregisterProducer()
        transport.loseConnection()
        return self._gone


def _endpoint(reactor: Any, url: BrokerURL) -> Any:
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=10)
    if url.tls:
        from twisted.internet.ssl import CertificateOptions, optionsForClientTLS

        if not url.verify:
            # ssl_cert_reqs=none: encrypted, not authenticated (the URL asked for it).
            return wrapClientTLS(CertificateOptions(), endpoint)
        trust = None
        if url.ca_certs is not None:
            from twisted.internet.ssl import Certificate, trustRootFromCertificates

            with open(url.ca_certs, "rb") as pem:
                blocks = pem.read().split(b"-----END CERTIFICATE-----")[:-1]
            trust = trustRootFromCertificates(
                [Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n") for block in blocks]
            )
        endpoint = wrapClientTLS(optionsForClientTLS(url.host, trustRoot=trust), endpoint)
    return endpoint
