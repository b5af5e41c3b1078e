"""Port of Crow's ``examples/middlewares/example_cors.cpp``: CORS headers by path prefix.

    twistd -n crow --routes examples.crow.cors --listen tcp:18080:interface=127.0.0.1

``/`` gets the global rule (any origin, methods ``POST, GET``, two allowed
headers); ``/cors`` allows the origin ``https://example.com`` only;
``/nocors`` (and below) gets no CORS header at all.

Two spellings differ from Crow's: ``global()`` is ``global_()`` (``global``
is a Python keyword), and an origin is a whole origin, scheme included
(``https://example.com``): Crow's docs write ``example.com``, which no
browser ever sends as ``Origin``, so crowtwist refuses it when configured.

Warning (Crow's): to let browsers cache the preflight (``max_age``), list
each header you use rather than ``*``.
"""

from __future__ import annotations

from http import HTTPMethod

from crowtwist import CORSHandler, Crow

# Enable CORS
app = Crow(CORSHandler())                               # crow::App<crow::CORSHandler> app;

# Customize CORS
cors = app.get_middleware(CORSHandler)                  # auto& cors = app.get_middleware<crow::CORSHandler>();

(cors
    .global_()
        .headers("X-Custom-Header", "Upgrade-Insecure-Requests")
        .methods(HTTPMethod.POST, HTTPMethod.GET)         # .methods("POST"_method, "GET"_method)
    .prefix("/cors")
        .origin("https://example.com")
    .prefix("/nocors")
        .ignore())


@app.route("/")
def index() -> str:
    return "Check Access-Control-Allow-Methods header"


@app.route("/cors")
def cors_route() -> str:
    return "Check Access-Control-Allow-Origin header"


if __name__ == "__main__":
    app.port(18080).run()
