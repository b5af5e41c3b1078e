"""Port of Crow's ``examples/helloworld.cpp``: one route answering ``Hello, world!``.

    twistd -n crow --routes examples.crow.helloworld --listen tcp:18080:interface=127.0.0.1
    python -m examples.crow.helloworld             # app.port(18080).run(), as in Crow
"""

from crowtwist import Crow

app = Crow()                                    # crow::SimpleApp app;


@app.route("/")                                 # CROW_ROUTE(app, "/")
def hello() -> str:                             # ([]() {
    return "Hello, world!"                      #     return "Hello, world!"; });


if __name__ == "__main__":
    app.port(18080).run()
