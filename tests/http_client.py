"""The standard library's HTTP client, run in a thread: a client crowtwist did not write."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

TIMEOUT = 10.0


@dataclass
class Reply:
    """One HTTP answer: status, headers (names lower-cased, repeated ones as a list) and body."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or ``None``."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


def request_sync(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> Reply:
    """Send one request over a fresh connection and read the whole answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return Reply(response.status, found, data)
    finally:
        connection.close()


def fetch(port: int, method: str, path: str, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> Deferred[Any]:
    """``request_sync`` in a thread: a Deferred of its ``Reply``."""
    return deferToThread(request_sync, port, method, path, headers, body)
