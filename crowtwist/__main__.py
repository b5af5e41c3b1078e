"""``python -m crowtwist MODULE [options]``: serve an app without knowing twistd.

It is ``twistd --nodaemon --pidfile= crow MODULE [options]``, run by
twistd's own code in this process, so the two cannot drift apart: the same
options, log lines, signal handling (SIGTERM or Ctrl-C close every WebSocket
with 1001, then exit 0), workers, exit statuses and one-line errors.  The
one twistd option taken here is ``--reactor NAME``: importing crowtwist (as
``-m`` does before this module runs) installs the default reactor, so with
another one this process becomes twistd (``exec``, same pid) before any
crowtwist import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

PROGRAM = "python -m crowtwist"

_TWISTD_OPTIONS = ("--nodaemon", "--pidfile=")
"""Foreground, no pidfile: a command for a terminal or a supervisor."""

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"

_MORE = """
Also:
      --reactor=NAME         The Twisted reactor to run (twistd --help-reactors
                             lists them), e.g. asyncio.

Runs in the foreground, without a pidfile; logs go to standard output. The same
as: twistd --nodaemon --pidfile= crow MODULE [options] (see twistd --help for
daemonizing, log files and the rest).
"""


def help_text() -> str:
    """What ``python -m crowtwist --help`` prints."""
    from .tap import Options

    return f"Usage: {PROGRAM} MODULE[:ATTRIBUTE] [options]\n{Options().getUsage()}{_MORE}"


def _take_reactor(args: list[str]) -> tuple[str | None, list[str]]:
    """``--reactor NAME`` (or ``--reactor=NAME``) out of ``args``, for twistd; the rest for crow."""
    reactor = None
    rest: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--reactor":
            reactor = next(words, None)
            if reactor is None:
                raise SystemExit(f"{PROGRAM}: --reactor needs a name (twistd --help-reactors lists them)")
        elif word.startswith("--reactor="):
            reactor = word.partition("=")[2]
        else:
            rest.append(word)
    return reactor, rest


def main(argv: Sequence[str] | None = None) -> None:
    """Run twistd's ``crow`` in the foreground with ``argv`` (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(help_text())
        raise SystemExit(0)
    if not args:
        raise SystemExit(f"{PROGRAM}: name the app's module: {PROGRAM} MODULE[:ATTRIBUTE] [options] (--help lists them)")
    reactor, args = _take_reactor(args)
    if reactor is not None:
        from twisted.application.reactors import getReactorTypes

        names = sorted(kind.shortName for kind in getReactorTypes())
        if reactor not in names:
            raise SystemExit(f"{PROGRAM}: no reactor {reactor!r}; the reactors are {', '.join(names)}")
        # A fresh interpreter, where twistd installs the reactor before crowtwist is imported.
        # (test_python_m_with_another_reactor runs it; coverage cannot see a line that replaces the process.)
        os.execv(  # pragma: no cover
            sys.executable, [sys.executable, "-c", _TWISTD, *_TWISTD_OPTIONS, f"--reactor={reactor}", "crow", *args]
        )
    from twisted.scripts.twistd import run

    from . import tap

    tap.PROGRAM = PROGRAM
    # twistd reads its command line from sys.argv, and names itself after sys.argv[0] in its messages.
    sys.argv = [PROGRAM, *_TWISTD_OPTIONS, "crow", *args]
    run()


if __name__ == "__main__":
    main()
