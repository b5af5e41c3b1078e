"""Port of Crow's ``examples/example.cpp``: typed parameters, JSON, methods, query strings, middleware.

    twistd -n crow --routes examples.crow.example --listen tcp:18080:interface=127.0.0.1
    python -m examples.crow.example

Then try ``/hello/42``, ``/add/1/2``, ``/json``, ``/params?foo='blabla'&pew=32&count[]=a&count[]=b``
or ``curl -d '{"a":1,"b":2}' 127.0.0.1:18080/add_json``.

What differs from the C++ file, and why:

- ``crow::ILogHandler`` and ``app.loglevel(...)``: Python logs through
  ``twisted.logger``; ``twistd`` (or ``app.run``) sets where it goes.
- ``.name("hello")``: crowtwist routes have no names (Crow uses them for
  nothing but debug output).
- ``crow::mustache``: Python has templates of its own; ``string.Template``
  here (Jinja2 or Chameleon for real pages).
- ``.multithreaded()``: one reactor thread serves every request; run
  blocking work with ``deferToThread`` and return its Deferred.
"""

from __future__ import annotations

from http import HTTPMethod, HTTPStatus
from string import Template
from typing import Any

from twisted.logger import Logger

from crowtwist import BadRequest, Crow, Middleware, Request, Response

log = Logger(namespace="examples.crow.example")


class ExampleMiddleware(Middleware):
    """Crow's ``ExampleMiddleware``: logs its message before every request."""

    def __init__(self) -> None:
        self.message = "foo"

    def set_message(self, new_message: str) -> None:   # setMessage
        self.message = new_message

    def before_handle(self, req: Request, res: Response, ctx: Any) -> None:
        log.debug(" - MESSAGE: {message}", message=self.message)

    def after_handle(self, req: Request, res: Response, ctx: Any) -> None:
        pass  # no-op


app = Crow(ExampleMiddleware())                         # crow::App<ExampleMiddleware> app;

app.get_middleware(ExampleMiddleware).set_message("hello")


@app.route("/")
def hello() -> str:
    return "Hello World!"


@app.route("/about")
def about() -> str:
    return "About Crow example."


# a request to /path should be forwarded to /path/ (a 301 that keeps the query)
@app.route("/path/")
def path() -> str:
    return "Trailing slash test case.."


# simple json response: a dict is sent as application/json
@app.route("/json")
def json_() -> dict[str, Any]:
    x = {"message": "Hello, World!"}
    x["message2"] = "Hello, World.. Again!"
    return x


@app.route("/json-initializer-list-constructor")
def json_initializer_list() -> dict[str, Any]:
    # Python's json has one int and one float type: Crow's int64/uint64 and float/double collapse.
    return {
        "first": "Hello world!",
        "second": "How are you today?",
        "third": 54,
        "fourth": 54,
        "fifth": 54,
        "sixth": 54,
        "seventh": 2.0,
        "eighth": 2.0,
        "ninth": None,
        "tenth": True,
    }


# json list response
@app.route("/json_list")
def json_list() -> list[int]:
    return [1, 2, 3]


# {ip}:18080/hello/{integer up to 100} answers "{integer} bottles of beer!"
@app.route("/hello/<int>")
def bottles(count: int) -> Response | str:
    if count > 100:
        return Response(400)
    return f"{count} bottles of beer!"


# Same as above, but using a status constant (Crow's crow::status)
@app.route("/hello_status/<int>")
def bottles_status(count: int) -> Response | str:
    if count > 100:
        return Response(HTTPStatus.BAD_REQUEST)
    return f"{count} bottles of beer!"


# {ip}:18080/add/1/2 answers 3.  Crow's (crow::response& res, int a, int b):
# in crowtwist the response form always takes the request first.
@app.route("/add/<int>/<int>")
def add(req: Request, res: Response, a: int, b: int) -> None:
    res.write(str(a + b))
    res.end()


# same as the example above but with a template (Crow: crow::mustache)
@app.route("/add_mustache/<int>/<int>")
def add_template(a: int, b: int) -> str:
    return Template("Value is $func").substitute(func=a + b)


# Crow's commented-out "/another/<int>" with ([](int a, int b) {...}) fails to
# compile ("Handler type is mismatched with URL parameters").  Here a handler
# taking 0 or 3 or more parameters for one <int> raises TypeError when declared,
# naming this file and line; but (a, b) is read as (req, <int>): `a` is given
# the request, whatever its annotation says.
#
#     @app.route("/another/<int>")
#     def another(a: int, b: int) -> Response: ...


# curl -d '{"a":1,"b":2}' {ip}:18080/add_json  ->  3
@app.route("/add_json").methods(HTTPMethod.POST)         # .methods("POST"_method)
def add_json(req: Request) -> str:
    x = req.json()  # a body that is not JSON: 400 with the reason
    if not isinstance(x, dict) or not all(type(x.get(k)) is int for k in ("a", "b")):
        raise BadRequest('expected {"a": <integer>, "b": <integer>}')
    return str(x["a"] + x["b"])


# /params?foo='blabla'&pew=32&count[]=a&count[]=b&mydict[a]=b&mydict[abcd]=42
@app.route("/params")
def params(req: Request) -> str:
    url_params = req.url_params
    lines = ["Params: [ " + ", ".join(f"{k}={v}" for k, v in url_params.items()) + " ]", ""]

    # To get a simple string from the url params
    lines.append(f"The key 'foo' was {'not ' if url_params.get('foo') is None else ''}found.")

    # To get a double from the request: /params?pew=42
    pew = url_params.get("pew")
    if pew is not None:
        try:
            count_d = float(pew)
        except ValueError:
            raise BadRequest(f"pew must be a number, not {pew!r}") from None
        lines.append(f"The value of 'pew' is {count_d:g}")

    # To get a list from the request: /params?count[]=a&count[]=b
    count = url_params.get_list("count")
    lines.append(f"The key 'count' contains {len(count)} value(s).")
    lines.extend(f" - {value}" for value in count)

    # To get a dictionary from the request: /params?mydict[a]=b&mydict[abcd]=42
    mydict = url_params.get_dict("mydict")
    lines.append(f"The key 'dict' contains {len(mydict)} value(s).")
    lines.extend(f" - {key} -> {value}" for key, value in mydict.items())
    return "\n".join(lines) + "\n"


@app.route("/large")
def large() -> str:
    return " " * (512 * 1024)  # sent gzip-compressed to clients that accept it


# Take a multipart/form-data request and print out the body of its first part
# (Crow's route is GET only; POST, which forms send, is added)
@app.route("/multipart").methods("GET", "POST")
def multipart(req: Request) -> str:
    msg = req.multipart()  # crow::multipart::message_view msg(req); 400 if the body is not multipart
    if not msg.parts:
        raise BadRequest("no parts")
    log.info("body of the first part {body!r}", body=msg.parts[0].body)
    return "it works!"


if __name__ == "__main__":
    app.port(18080).run()
