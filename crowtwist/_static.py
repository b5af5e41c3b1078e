"""Placeholder until the static files module lands."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.web.server import Request
from twisted.web.static import File

from ._http import write_response
from ._response import Response

__all__ = ["resolve", "serve_file"]


def resolve(directory: str | os.PathLike[str], partial: str) -> Path | None:
    """The file ``partial`` under ``directory``, or ``None`` if it escapes or is not a file."""
    base = Path(directory).resolve()
    candidate = (base / partial).resolve()
    if base not in candidate.parents or not candidate.is_file():
        return None
    return candidate


def serve_file(request: Request, path: str | os.PathLike[str], *, compress: bool = True) -> bytes | int:
    """Answer ``request`` with the file at ``path``."""
    if not Path(path).is_file():
        return write_response(request, Response(404, "404 Not Found\n"))
    result: bytes | int = File(os.fspath(path)).render(request)
    return result
