"""Echo peer over TLS: aiohttp's WebSocketResponse on the default asyncio loop, stdlib ssl.

The same echo as ../shared/bench/peers/aiohttp_echo.py (any path, text as text, binary as
binary, messages up to 32 MiB), served with --cert/--key so that crowtwist's ssl: endpoint and
this peer present the same certificate in benchmarks/compare.sh's TLS pass.

Usage: python aiohttp_echo_tls.py --port PORT --cert cert.pem --key key.pem
"""

from __future__ import annotations

import argparse
import ssl

from aiohttp import WSMsgType, web

# 16 MiB messages must pass in every peer; aiohttp refuses one as big as its limit, hence 32 MiB.
MAX_MESSAGE = 32 * 1024 * 1024


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM certificate (chain)")
    parser.add_argument("--key", required=True, help="PEM private key")
    args = parser.parse_args()
    # The server defaults of the standard library (TLS 1.2+, its cipher order), as a deployment
    # that ends TLS in aiohttp would have them.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    app = web.Application()
    app.router.add_get("/{path:.*}", echo)  # any path, so compare --path works
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, access_log=None, print=None)


if __name__ == "__main__":
    main()
