"""Port of Crow's ``examples/example_static_file.cpp``: a file as a route's answer, and a static directory.

    twistd -n crow --routes examples.crow.static_file --listen tcp:18080:interface=127.0.0.1

``/`` answers with ``static/cat.svg`` (Crow's example: ``cat.jpg``);
``/static/<path>`` serves ``examples/crow/static/``.  Crow's static
directory is ``static`` next to where the program runs, moved with
``CROW_STATIC_DIRECTORY`` / ``CROW_STATIC_ENDPOINT`` and turned off with
``CROW_DISABLE_STATIC_DIR``; crowtwist's is ``static`` in the current
directory (served only if it exists), moved with
``app.static_dir(directory, url="/static/<path>")`` and turned off with
``app.static_dir(None)``.  This example names its directory from this file,
so it serves the same files from any current directory.

Files are streamed, with Range (206), If-Modified-Since (304) and HEAD;
text-like ones of 1 KiB or more go gzip-compressed to clients that accept it.
"""

from __future__ import annotations

from crowtwist import Crow, Request, Response

from . import STATIC

app = Crow()
app.static_dir(STATIC)                                  # #define CROW_STATIC_DIRECTORY "..."


@app.route("/")
def cat(req: Request, res: Response) -> None:
    # replace cat.svg with your file path
    res.set_static_file_info(STATIC / "cat.svg")
    res.end()


# Not in Crow's file: one file at one URL, without a handler of your own.
app.static_file("/hello.txt", STATIC / "hello.txt")


if __name__ == "__main__":
    app.port(18080).run()
