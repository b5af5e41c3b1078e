"""Server CPU per plain HTTP request through a crowtwist app's route tree, in memory.

One keep-alive connection on a StringTransport, requests fed to the channel
one at a time: what is measured is twisted.web's parsing and writing plus
crowtwist's routing, exchange and response (no sockets, no client).  Give a
source tree to compare another commit with (``git worktree add /tmp/old REV``):

    .venv/bin/python benchmarks/http_routes.py [TREE ...]

Prints microseconds per request (the minimum of 7 rounds of 5,000) for each
tree and each app shape: a JSON handler with typed parameters, the same
behind one app-wide middleware, and a 404.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = r"""
import sys, time, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
import crowtwist
from crowtwist import Crow

def measure(app, raw):
    site = app.site()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    def one():
        channel.dataReceived(raw)
        transport.clear()
    for _ in range(500):
        one()
    best = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(5000):
            one()
        best.append((time.perf_counter() - start) / 5000 * 1e6)
    return min(best)

def app_with(middleware):
    app = Crow()
    if middleware:
        class Stamp:
            def after_handle(self, req, res, ctx):
                res.set_header("X-Stamp", "1")
        app.use(Stamp())
    app.route("/add/<int>/<int>")(lambda a, b: {"sum": a + b})
    return app

rows = [("JSON handler", app_with(False), b"GET /add/2/3 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("404", app_with(False), b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")]
if hasattr(Crow, "use"):
    rows.insert(1, ("JSON handler, 1 middleware", app_with(True), b"GET /add/2/3 HTTP/1.1\r\nHost: x\r\n\r\n"))
for name, app, raw in rows:
    print(f"{sys.argv[1]:<24} {name:<28} {measure(app, raw):6.1f} us/request")
"""


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for tree in sys.argv[1:] or [here]:
        subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree)], check=True)


if __name__ == "__main__":
    main()
