"""Port of Crow's ``examples/example_catchall.cpp``: one handler for every 404 and 405.

    twistd -n crow --routes examples.crow.catchall --listen tcp:18080:interface=127.0.0.1

Crow's catch-all here takes ``(crow::response& res)`` alone.  A crowtwist
catch-all takes ``()``, ``(req)`` or ``(req, res)``: with one parameter it
is given the request, so the response form always takes ``req`` first.
``res.code`` comes preset to 404, or 405 with ``Allow`` set.
"""

from __future__ import annotations

from crowtwist import Crow, Request, Response

app = Crow()


@app.route("/")
def hello() -> str:
    return "Hello"


# Setting a custom route for any URL that isn't defined, instead of a simple 404.
@app.catchall_route()                                   # CROW_CATCHALL_ROUTE(app)
def catchall(req: Request, res: Response) -> None:
    if res.code == 404:
        res.body = "The URL does not seem to be correct."
    elif res.code == 405:
        res.body = "The HTTP method does not seem to be correct."
    res.end()


if __name__ == "__main__":
    app.port(18080).run()
