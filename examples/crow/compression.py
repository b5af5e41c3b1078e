"""Port of Crow's ``examples/example_compression.cpp``: compressed responses, and one opting out.

    twistd -n crow --routes examples.crow.compression --listen tcp:18080:interface=127.0.0.1
    curl --compressed -v 127.0.0.1:18080/hello_compressed

crowtwist compresses with gzip, on by default (``app.use_compression(False)``
turns it off); Crow compresses only when told, with DEFLATE or GZIP.  A body
goes compressed when the client sends ``Accept-Encoding: gzip``, its type is
text-like (text, JSON, XML, JavaScript, SVG...) and it is at least 1 KiB:
below that, compressing saves no packet.  So the bodies here are Crow's
sentences repeated.  Crow's per-response ``res.compressed = false`` is the
header ``Content-Encoding: identity``, which is removed before sending.
"""

from __future__ import annotations

from crowtwist import Crow, Request, Response

app = Crow()


@app.route("/hello")
def hello(req: Request, res: Response) -> None:
    res.set_header("Content-Encoding", "identity")      # res.compressed = false;
    res.body = "Hello World! This is uncompressed!\n" * 40
    res.end()


@app.route("/hello_compressed")
def hello_compressed() -> str:
    return "Hello World! This is compressed by default!\n" * 40


app.use_compression(True)                               # .use_compression(crow::compression::algorithm::GZIP)


if __name__ == "__main__":
    app.port(18080).run()
