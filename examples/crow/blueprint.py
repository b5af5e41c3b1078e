"""Port of Crow's ``examples/example_blueprint.cpp``: nested blueprints, a blueprint's catch-all.

    twistd -n crow --routes examples.crow.blueprint --listen tcp:18080:interface=127.0.0.1

``/bp_prefix/bp2/`` answers ``Hello world!``; anything else under
``/bp_prefix/bp2`` gets the sub-blueprint's catch-all (``WRONG!!``, with
status 200 as in Crow, since what it returns replaces the 404); ``/bp_prefix/static/<path>`` serves the outer blueprint's static
directory.  Crow names its directories relative to the current directory
(``"cstat"``); here they are found from this file, so the example runs from
anywhere.  Crow's templates directories (``"ctemplate"``) are kept as
``bp.templates_dir`` for your template engine to use; crowtwist renders no
templates (no mustache).
"""

from __future__ import annotations

from crowtwist import Blueprint, Crow

from . import STATIC

app = Crow()

bp = Blueprint("bp_prefix", STATIC, "ctemplate")         # crow::Blueprint bp("bp_prefix", "cstat", "ctemplate");

sub_bp = Blueprint("bp2", None, "cstemplate")            # crow::Blueprint sub_bp("bp2", "csstat", "cstemplate");


@sub_bp.route("/")                                      # CROW_BP_ROUTE(sub_bp, "/")
def hello() -> str:
    return "Hello world!"


@sub_bp.catchall_route()                                # CROW_BP_CATCHALL_ROUTE(sub_bp)
def wrong() -> str:
    return "WRONG!!"  # status 200, as in Crow: what a catch-all returns replaces the 404


bp.register_blueprint(sub_bp)
app.register_blueprint(bp)


if __name__ == "__main__":
    app.port(18080).run()
