"""Port of Crow's ``examples/ssl/example_ssl.cpp``: HTTPS (and wss://) with a certificate and key.

    twistd -n crow --routes examples.crow.tls --listen ssl:18080:privateKey=test.key:certKey=test.crt
    python -m examples.crow.tls                     # the same, without twistd

Crow's ``app.ssl_file("test.crt", "test.key")`` (or one ``.pem``) is a
Twisted ``ssl:`` endpoint string (``privateKey=``, ``certKey=``; a ``.pem``
holding both is given as both; ``extraCertChain=`` for
``ssl_chainfile``); ``app.ssl(ctx)`` is any endpoint object given to
``app.service(...)``.  Needs the ``tls`` extra (``pip install
'crowtwist[tls]'``).
"""

from __future__ import annotations

from crowtwist import Crow

app = Crow()


@app.route("/")
def hello() -> str:
    return "Hello world!"


if __name__ == "__main__":
    from twisted.internet import reactor

    app.service("ssl:18080:privateKey=test.key:certKey=test.crt").startService()  # .ssl_file(...).run()
    reactor.run()
