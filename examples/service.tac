"""crowtwist inside a hand-written Twisted application, next to other services.

    twistd -n -y examples/service.tac

- ``app.service(...)`` is an ``IService``: the demo routes on 127.0.0.1:18080;
- ``app.resource()`` mounts under ``/crow/`` of an existing ``Site`` on 127.0.0.1:18081,
  beside that site's own ``/status`` page (the chat is at http://127.0.0.1:18081/crow/: its
  page builds its WebSocket's URL relative to itself, so the prefix is kept);
- a ``TimerService`` logs how many WebSockets are open, as any other service would run.

Stopping (Ctrl-C, SIGTERM) closes every open WebSocket with 1001 before the process exits.
Ports come from CROW_PORT and SITE_PORT when set.
"""

import os
import sys

from twisted.application import service, strports
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

sys.path.insert(0, os.getcwd())  # twistd -y does not put the current directory on the path

from examples.demo import app  # noqa: E402

log = Logger(namespace="example.tac")
crow_port = int(os.environ.get("CROW_PORT", "18080"))
site_port = int(os.environ.get("SITE_PORT", "18081"))


class Status(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return f"{sum(1 for _ in app.connections())} WebSocket(s) open\n".encode()


application = service.Application("crowtwist example")

app.service(f"tcp:{crow_port}:interface=127.0.0.1").setServiceParent(application)

root = Resource()
root.putChild(b"status", Status())
root.putChild(b"crow", app.resource())
strports.service(f"tcp:{site_port}:interface=127.0.0.1", Site(root)).setServiceParent(application)

TimerService(
    60, lambda: log.info("{n} WebSocket(s) open", n=sum(1 for _ in app.connections()))
).setServiceParent(application)
