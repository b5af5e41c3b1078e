"""Port of Crow's ``examples/example_middleware.cpp``: app-wide, per-route and per-blueprint middleware.

    twistd -n crow --routes examples.crow.middleware --listen tcp:18080:interface=127.0.0.1

``/`` answers ``Hello, world!``; ``/secret`` is stopped by
``SecretContentGuard`` (403 ``SECRET!``); ``/bp/`` answers
``Hello: + (World)``, the blueprint's ``RequestAppend`` appending what the
handler left in its context.

Crow lists every middleware in ``crow::App<...>`` and enables the local ones
(``crow::ILocalMiddleware``) with ``CROW_MIDDLEWARES``.  crowtwist needs no
such list: middleware given to ``Crow(...)`` or ``app.use(...)`` runs on
every request, and ``.middlewares(...)`` on a route or a blueprint runs
there only (a class is instantiated once, when declared).
"""

from __future__ import annotations

from twisted.logger import Logger

from crowtwist import Blueprint, Crow, Middleware, Request, Response

log = Logger(namespace="examples.crow.middleware")


class RequestLogger(Middleware):
    class Context:
        pass

    # This method is run before handling the request
    def before_handle(self, req: Request, res: Response, ctx: Context) -> None:
        log.info("Request to: {url}", url=req.url)

    # This method is run after handling the request
    def after_handle(self, req: Request, res: Response, ctx: Context) -> None:
        pass


# Per handler middleware: enabled with .middlewares(...) (Crow: ILocalMiddleware + CROW_MIDDLEWARES)
class SecretContentGuard(Middleware):
    def before_handle(self, req: Request, res: Response, ctx: object) -> None:
        # A request can be aborted prematurely
        res.write("SECRET!")
        res.code = 403
        res.end()


class RequestAppend(Middleware):
    # Values from this context can be accessed from handlers
    class Context:
        def __init__(self) -> None:
            self.message = ""

    def after_handle(self, req: Request, res: Response, ctx: Context) -> None:
        # The response can be modified
        res.write(" + (" + ctx.message + ")")


app = Crow(RequestLogger())                              # crow::App<RequestLogger, ...> app;


@app.route("/")
def hello() -> str:
    return "Hello, world!"


@app.route("/secret").middlewares(SecretContentGuard)   # .CROW_MIDDLEWARES(app, SecretContentGuard)
def secret() -> str:
    return ""


bp = Blueprint("bp")
# Register middleware on all routes on a specific blueprint
# This also applies to sub blueprints
bp.middlewares(RequestAppend)                           # bp.CROW_MIDDLEWARES(app, RequestAppend);


@bp.route("/")
def bp_hello(req: Request) -> str:
    # Get RequestAppend's context
    ctx = app.get_context(RequestAppend, req)
    ctx.message = "World"
    return "Hello:"


app.register_blueprint(bp)


if __name__ == "__main__":
    app.port(18080).run()
