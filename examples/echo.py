"""Echo: text comes back as text and binary as binary, at ``/`` and ``/echo``.

    twistd -n crow --routes examples.echo       # or: python -m examples.echo
"""

from crowtwist import Connection, Crow


def echo(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    if isinstance(data, bytes):
        conn.send_binary(data)
    else:
        conn.send_text(data)


def add_routes(app: Crow) -> None:
    """Declare the echo routes on ``app``."""
    app.route("/").websocket().onmessage(echo)
    app.route("/echo").websocket().onmessage(echo)
    app.route("/hello")(lambda request: "Hello from crowtwist\n")


app = Crow()
add_routes(app)

if __name__ == "__main__":
    app.run()
