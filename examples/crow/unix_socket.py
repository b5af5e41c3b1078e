"""Port of Crow's ``examples/example_unix_socket.cpp``: serving on a UNIX domain socket.

    twistd -n crow --routes examples.crow.unix_socket --listen unix:example.sock
    curl --unix-socket example.sock http://localhost/
    python -m examples.crow.unix_socket             # the same, without twistd

Crow's ``app.local_socket_path(path)`` is a Twisted endpoint string here:
``unix:PATH`` for ``--listen`` or ``app.service(...)``.  Crow's example
unlinks whatever is at the path first; a socket file left behind makes
Twisted's bind fail ("Address already in use"), so ``__main__`` below
removes a stale socket the same way (with ``twistd``, remove it yourself,
or use ``unix:PATH:lockfile=1``, with which Twisted removes the socket of a
server that died holding the lock, and refuses to start beside a live one).
"""

from __future__ import annotations

from crowtwist import Crow

app = Crow()


@app.route("/")
def hello() -> str:
    return "Hello, world!"


if __name__ == "__main__":
    from twisted.internet import reactor

    import os
    import stat

    local_socket_path = "example.sock"
    if os.path.exists(local_socket_path) and stat.S_ISSOCK(os.stat(local_socket_path).st_mode):
        os.unlink(local_socket_path)                    # unlink(local_socket_path.c_str());
    app.service(f"unix:{local_socket_path}").startService()  # app.local_socket_path(...).run()
    reactor.run()
