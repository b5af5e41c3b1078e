"""Port of Crow's ``examples/example_json_map.cpp``: JSON keys in sorted order.

    twistd -n crow --routes examples.crow.json_map --listen tcp:18080:interface=127.0.0.1

Crow's ``CROW_JSON_USE_MAP`` keeps a ``json::wvalue``'s keys in a
``std::map``, so they come out sorted.  A Python dict keeps the order keys
were inserted in; sort it yourself where the order matters.
"""

from __future__ import annotations

from crowtwist import Crow

app = Crow()


# {ip}:18080/json shows amessage before zmessage despite adding zmessage first.
@app.route("/json")
def json_() -> dict[str, str]:
    x = {"zmessage": "Hello, World!", "amessage": "Hello, World2!"}
    return dict(sorted(x.items()))


if __name__ == "__main__":
    app.port(18080).run()
