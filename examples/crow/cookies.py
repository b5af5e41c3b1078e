"""Port of Crow's ``examples/middlewares/example_cookies.cpp``: reading and setting cookies.

    twistd -n crow --routes examples.crow.cookies --listen tcp:18080:interface=127.0.0.1

``/write`` sets ``key=word`` (``Path=/``, ``Max-Age=120``, ``HttpOnly``);
``/read`` answers ``value: word`` when the browser sends it back.
"""

from __future__ import annotations

from crowtwist import CookieParser, Crow, Request

# Include CookieParser middleware
app = Crow(CookieParser())                              # crow::App<crow::CookieParser> app;


@app.route("/read")
def read(req: Request) -> str:
    ctx = app.get_context(CookieParser, req)            # app.get_context<crow::CookieParser>(req)
    # Read cookies with get_cookie ("" when the request has none of that name)
    value: str = ctx.get_cookie("key")
    return "value: " + value


@app.route("/write")
def write(req: Request) -> str:
    ctx = app.get_context(CookieParser, req)
    # Store cookies with set_cookie
    (ctx.set_cookie("key", "word")
        # configure additional parameters
        .path("/")
        .max_age(120)
        .httponly())
    return "ok!"


if __name__ == "__main__":
    app.port(18080).run()
