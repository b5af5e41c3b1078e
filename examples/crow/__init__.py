"""Crow's own examples (github.com/CrowCpp/Crow, ``examples/``), ported to crowtwist one file each.

Each module names the Crow file it ports, exposes its app as ``app`` and
runs under ``twistd``::

    twistd -n crow --routes examples.crow.helloworld --listen tcp:18080:interface=127.0.0.1

or on its own, from the repository's root: ``python -m examples.crow.helloworld``.
Files a module serves live in ``examples/crow/static/`` and are found from
the module's own path, so the current directory does not matter.
"""

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
"""The examples' static files (Crow's examples read theirs from the current directory)."""
