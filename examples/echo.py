"""Echo: text comes back as text and binary as binary, at ``/`` and ``/echo``.

    twistd -n crow --routes examples.echo       # or: python -m examples.echo
"""

from crowtwist import Connection, Crow

app = Crow()


def echo(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    if is_binary:
        assert isinstance(data, bytes)
        conn.send_binary(data)
    else:
        assert isinstance(data, str)
        conn.send_text(data)


app.route("/").websocket().onmessage(echo)
app.route("/echo").websocket().onmessage(echo)


@app.route("/hello")
def hello(request: object) -> str:
    return "Hello from crowtwist\n"


if __name__ == "__main__":
    app.run()
