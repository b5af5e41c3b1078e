"""``Hub``: an app's rooms and route-wide broadcasts, delivered here or through a relay.

Every open connection is in its route's channel (``route:<pattern>``) and in
the channels of the rooms it joined (``room:<name>``); rooms are app-wide,
one name space across routes.  ``send`` reaches every member of a channel
once, the sender included:

- without a relay (no broker), at once, in this process;
- with a relay that is up (a Redis broker), only through it: the relay
  publishes, and every process that shares it, this one included, gets the
  message back from its subscription and delivers it here with ``deliver``.
  Delivering locally as well would give this process's members the message
  twice;
- with a relay that is down, in this process only: what other processes
  miss meanwhile is dropped (at most once, as Redis pub/sub itself).

A delivery builds each frame once, not once per member, and skips a member
whose send buffer a frame would take over its bound (``send_shared``).
Nothing here blocks: a frame that a socket does not take waits in its
connection's backlog.
"""

from __future__ import annotations

from typing import Protocol

from twisted.python import threadable

from ._connection import Connection, check_room, send_shared
from ._encoding import data_header

__all__ = ["Hub", "Relay", "check_message", "check_room", "room_channel", "route_channel"]

_TEXT = 1
_BINARY = 2


def room_channel(room: str) -> str:
    """The channel of an app-wide room."""
    return "room:" + room


def route_channel(pattern: str) -> str:
    """The channel every connection of a WebSocket route is in."""
    return "route:" + pattern


class Relay(Protocol):
    """What carries messages to the other processes: a broker's side facing the hub."""

    def publish(self, channel: str, data: bytes) -> bool:
        """Publish ``data``; False when it cannot now (the hub then delivers locally)."""

    def subscribe(self, channel: str) -> None:
        """This process has members in ``channel`` now."""

    def unsubscribe(self, channel: str) -> None:
        """This process has no members in ``channel`` any more."""


def check_message(message: object) -> tuple[bool, bytes]:
    """``(is_binary, payload)`` of a broadcast: ``str`` goes as text, ``bytes`` as binary."""
    if isinstance(message, str):
        return False, message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return True, bytes(message)
    raise TypeError(f"a broadcast is str (text) or bytes (binary), not {type(message).__name__}")


class Hub:
    """An app's channels and their members in this process (see the module's docstring)."""

    __slots__ = ("_members", "_route", "_rooms", "relay", "delivered")

    def __init__(self) -> None:
        self._members: dict[str, dict[Connection, None]] = {}
        # Each open connection's route channel and rooms: what it leaves when it closes.
        self._route: dict[Connection, str] = {}
        self._rooms: dict[Connection, set[str]] = {}
        self.relay: Relay | None = None
        self.delivered = 0
        """Frames handed to connections by this hub (one per member per message)."""

    def channels(self) -> list[str]:
        """Every channel with a member in this process (what a relay subscribes to)."""
        return list(self._members)

    def members(self, channel: str) -> int:
        """How many connections of this process are in ``channel``."""
        return len(self._members.get(channel, ()))

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The rooms ``conn`` is in."""
        return frozenset(self._rooms.get(conn, ()))

    # Membership.

    def opened(self, conn: Connection, pattern: str) -> None:
        """``conn`` opened on the route ``pattern``: it is in the route's channel."""
        channel = self._route[conn] = route_channel(pattern)
        self._rooms[conn] = set()
        self._add(channel, conn)

    def join(self, conn: Connection, room: str) -> None:
        """``conn`` joins ``room`` (a connection that is not open any more does not)."""
        rooms = self._rooms.get(conn)
        if rooms is None or room in rooms:
            return
        rooms.add(room)
        self._add(room_channel(room), conn)

    def leave(self, conn: Connection, room: str) -> None:
        """``conn`` leaves ``room`` (if it was in it)."""
        rooms = self._rooms.get(conn)
        if rooms is None or room not in rooms:
            return
        rooms.discard(room)
        self._remove(room_channel(room), conn)

    def closed(self, conn: Connection) -> None:
        """``conn`` closed: it leaves its route's channel and every room."""
        route = self._route.pop(conn, None)
        if route is not None:
            self._remove(route, conn)
        for room in self._rooms.pop(conn, ()):
            self._remove(room_channel(room), conn)

    def _add(self, channel: str, conn: Connection) -> None:
        members = self._members.get(channel)
        if members is None:
            members = self._members[channel] = {}
            if self.relay is not None:
                self.relay.subscribe(channel)
        members[conn] = None

    def _remove(self, channel: str, conn: Connection) -> None:
        members = self._members.get(channel)
        if members is None:
            return
        members.pop(conn, None)
        if not members:
            del self._members[channel]
            if self.relay is not None:
                self.relay.unsubscribe(channel)

    # Messages.

    def send(self, channel: str, message: str | bytes) -> None:
        """Send ``message`` to every member of ``channel``, in every process sharing the relay."""
        is_binary, payload = check_message(message)
        relay = self.relay
        if relay is not None and relay.publish(channel, (b"\x02" if is_binary else b"\x01") + payload):
            return
        self._deliver(channel, is_binary, payload)

    def send_from_any_thread(self, channel: str, message: str | bytes) -> None:
        """``send``, handed to the reactor thread when called from another (checked here first)."""
        check_message(message)
        if threadable.isInIOThread() or threadable.ioThread is None:  # (None: no reactor has run yet)
            self.send(channel, message)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(self.send, channel, message)

    def deliver(self, channel: str, data: bytes) -> None:
        """A message the relay brought (what ``send`` gave it); one it cannot read is dropped."""
        if not data or data[0] not in (_TEXT, _BINARY):
            return
        self._deliver(channel, data[0] == _BINARY, data[1:])

    def _deliver(self, channel: str, is_binary: bool, payload: bytes) -> None:
        members = self._members.get(channel)
        if not members:
            return
        # One frame for every member that takes frames as they are (no extension).
        frame = data_header(is_binary, len(payload)) + payload
        delivered = 0
        for conn in tuple(members):
            if send_shared(conn, frame, payload, is_binary):
                delivered += 1
        self.delivered += delivered

