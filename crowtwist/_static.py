"""Static files (Crow's ``static/`` directory, ``res.set_static_file_info``): finding one safely, serving it.

``resolve`` maps a ``<path>`` route parameter to a file under a directory, or
to nothing when it would leave the directory or reach something not to serve.
``serve_file`` answers a request with a file: twisted.web's ``File`` gives
the content type, ``Range`` (206, 416), ``If-Modified-Since`` (304), HEAD and
the streaming by a producer; a compressible file goes out gzip-compressed,
chunk by chunk, to a client that takes gzip.  Memory stays bounded whatever
the file's size.

This module does not import ``_http``, so that ``_http`` can import it (to
answer a ``Response`` that has ``set_static_file_info``).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

from twisted.web.http import CACHED, datetimeToString
from twisted.web.server import NOT_DONE_YET, Request
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

with warnings.catch_warnings():
    # twisted.web.static makes its HTML error pages at import time from classes Twisted itself deprecated
    # (22.10): a DeprecationWarning nobody but Twisted can act on, an error under -W error.  Its pages are
    # never used here.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="twisted.web.static")
    from twisted.web.static import File, getTypeAndEncoding

from ._compress import MIN_SIZE, GzipStream, accepts_gzip, add_vary, compressible

__all__ = ["CHUNK", "DEFAULT_TYPE", "content_type", "resolve", "serve_file"]

CHUNK = 65536
"""Bytes read from a file at a time: twisted.web's own (the transport's buffer size)."""

DEFAULT_TYPE = "application/octet-stream"
"""The type of a file whose extension says nothing: a download, never a page a browser would render (aiohttp's choice;
twisted.web's default, text/html, would let an uploaded file run script)."""

# Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK opens it at once, and the check
# that follows refuses it.  Regular files ignore the flag.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def resolve(directory: str | os.PathLike[str], partial: str) -> Path | None:
    """The regular file ``partial`` names under ``directory``, its real path; ``None`` if there is none to serve.

    ``partial`` is a ``<path>`` route parameter, percent-decoded already, its
    segments separated by ``/``.  ``None`` for: an empty or absolute path, an
    empty segment (``a//b``, a trailing ``/``), a backslash, a NUL, any
    segment starting with ``.`` (``.``, ``..``, and hidden files such as
    ``.env`` or ``.git/``: not served, as Express's serve-static does by
    default), something that is not a regular file (a directory: there are no
    listings, as in Crow; a FIFO, a device), a file that cannot be reached,
    and a symlink whose target is outside ``directory`` or hidden.  Symlinks
    that stay inside are followed.
    """
    if not isinstance(partial, str) or not partial or "\\" in partial or "\0" in partial:
        return None
    segments = partial.split("/")
    if any(not segment or segment.startswith(".") for segment in segments):
        return None
    try:
        base = Path(directory).resolve(strict=True)
        target = base.joinpath(*segments).resolve(strict=True)
        # The lexical checks above are the policy; this one is the guard: where the symlinks really lead.
        if not target.is_relative_to(base) or any(part.startswith(".") for part in target.relative_to(base).parts):
            return None
        if not stat.S_ISREG(target.stat().st_mode):
            return None
    except (OSError, RuntimeError, ValueError):  # missing, unreadable, a symlink loop (RuntimeError before 3.13)
        return None
    return target


def content_type(path: str | os.PathLike[str]) -> str:
    """The ``Content-Type`` a file is served with: by its extension; text in UTF-8; ``DEFAULT_TYPE`` if unknown.

    ``.gz`` and ``.bz2`` files are archives (``application/gzip``), not
    another type with a ``Content-Encoding``, which would make browsers unpack
    a download.
    """
    media: str = getTypeAndEncoding(os.path.basename(os.fspath(path)), File.contentTypes, {}, DEFAULT_TYPE)[0]
    return media + "; charset=utf-8" if media.startswith("text/") else media


def serve_file(request: Request, path: str | os.PathLike[str], *, compress: bool = True) -> bytes | int:
    """Answer ``request`` with the file at ``path``; return what ``render`` returns (``NOT_DONE_YET`` when streaming).

    A missing file, one that is not a regular file, or one that cannot be
    read gets 404 with a short text body.  GET and HEAD get
    ``If-Modified-Since`` (304) and ``Range`` (one range: 206, or 416 when it
    is past the end; several ranges or an ``If-Range`` that is not the
    file's ``Last-Modified``: the whole file, 200, as RFC 9110 allows);
    other methods (a handler's ``set_static_file_info`` on a POST route) get
    the file without conditions.

    With ``compress``, a ``compressible`` file of at least ``MIN_SIZE``
    bytes goes out gzip-compressed to a client that accepts gzip and asked
    for no range: chunked, without ``Content-Length``.  Every response for
    such a file (200 either way, 206, 304) carries ``Vary: Accept-Encoding``.  A client that goes away
    midway stops the reading; the file is closed.

    Where a condition does not apply (a ``Range`` on a POST, say), its
    header is removed from ``request.requestHeaders`` before twisted.web's
    ``File`` reads them.
    """
    if request.channel is None:
        return NOT_DONE_YET  # the client has gone (a handler answered late): nothing to open, nobody to send to
    name = os.fspath(path)
    try:
        descriptor = os.open(name, _OPEN_FLAGS)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return _not_found(request)
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        return _not_found(request)
    handle = os.fdopen(descriptor, "rb")
    kind = content_type(name)
    request.setHeader(b"server", b"crowtwist")
    _only_for_get(request)
    # A file too small to compress is the same for every client: no Vary, as compress_body does for bodies.
    gzip = compress and compressible(kind) and info.st_size >= MIN_SIZE
    if gzip:
        add_vary(request.responseHeaders)
    if request.setLastModified(info.st_mtime) is CACHED:
        # twisted.web would send this 304 with Content-Length: 0, which RFC 9110 section 8.6 forbids.
        handle.close()
        request.finish()
        return NOT_DONE_YET
    _drop_unsupported_range(request, info.st_mtime)
    if (
        gzip
        and not request.requestHeaders.hasHeader(b"range")
        and accepts_gzip(b",".join(request.requestHeaders.getRawHeaders(b"accept-encoding", [])))
    ):
        return _serve_gzip(request, handle, kind)
    result: bytes | int = File.render_GET(_OpenFile(name, handle, info, kind), request)
    return result


def _not_found(request: Request) -> bytes:
    request.setResponseCode(404, b"Not Found")
    request.setHeader(b"server", b"crowtwist")
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"404 Not Found\n"


def _only_for_get(request: Request) -> None:
    """Drop the conditions twisted.web's File would apply where RFC 9110 says they do not.

    If-Modified-Since and Range are for GET and HEAD only (sections 13.1.3,
    14.2); If-Modified-Since is ignored when If-None-Match is present
    (13.1.3): no ETag here, so no tag matches.
    """
    headers = request.requestHeaders
    if request.method not in (b"GET", b"HEAD"):
        headers.removeHeader(b"range")
        headers.removeHeader(b"if-modified-since")
    elif headers.hasHeader(b"if-none-match"):
        headers.removeHeader(b"if-modified-since")


def _drop_unsupported_range(request: Request, mtime: float) -> None:
    """Serve the whole file, as RFC 9110 section 14.2 allows, for what twisted.web's File gets wrong.

    Several ranges: File sends a multipart answer, but fails (a 500) when
    none is satisfiable, and overlapping ranges would multiply the bytes
    sent.  If-Range: File ignores it, so a client resuming a download of a
    file changed since would splice two versions; its date must be exactly
    the file's Last-Modified (section 13.1.5), and an entity tag never
    matches (no ETag here).
    """
    headers = request.requestHeaders
    values = headers.getRawHeaders(b"range")
    if values is None:
        return
    if_range = headers.getRawHeaders(b"if-range")
    # Range is a single field: two lines are as good as two ranges (and File would read only the last one).
    several = len(values) > 1 or len([part for part in values[0].partition(b"=")[2].split(b",") if part.strip()]) > 1
    if several or (if_range is not None and [value.strip() for value in if_range] != [_http_date(mtime)]):
        headers.removeHeader(b"range")


def _http_date(mtime: float) -> bytes:
    """``Last-Modified`` as twisted.web writes it for ``mtime`` (rounded up to the second)."""
    date: bytes = datetimeToString(math.ceil(mtime))
    return date


def _serve_gzip(request: Request, handle: BinaryIO, kind: str) -> bytes | int:
    request.setResponseCode(200)
    request.setHeader(b"accept-ranges", b"bytes")  # a Range request gets the identity bytes, 206
    request.setHeader(b"content-type", kind.encode("ascii"))
    request.setHeader(b"content-encoding", b"gzip")
    request.responseHeaders.removeHeader(b"content-length")
    if request.method == b"HEAD":
        handle.close()
        return b""
    _GzipFileProducer(request, handle).start()
    return NOT_DONE_YET


@implementer(IPullProducer)
class _GzipFileProducer:
    """Reads a file a chunk at a time as the connection takes it, writes it gzip-compressed, closes it."""

    def __init__(self, request: Request, handle: BinaryIO) -> None:
        self._request = request
        self._handle = handle
        self._gzip = GzipStream()

    def start(self) -> None:
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        data = self._handle.read(CHUNK)
        if data:
            self._request.write(self._gzip.compress(data))
            return
        self._request.write(self._gzip.finish())
        self._request.unregisterProducer()
        self._request.finish()
        self._handle.close()

    def stopProducing(self) -> None:
        # The client went away (the connection stops its producer): nothing more to read.
        self._handle.close()


class _OpenFile(File):
    """twisted.web's File over a file opened and checked already.

    What File would look up again by the path (exists, is a directory, size,
    modification time) comes from that one ``fstat``, so a file replaced
    between the check and the reading (by a directory, a FIFO, a symlink) is
    not served.
    """

    def __init__(self, path: str, handle: BinaryIO, info: os.stat_result, kind: str) -> None:
        File.__init__(self, path)
        self.type = kind  # known: File's render_GET looks it up only when it is None
        self.encoding = None
        self._handle = handle
        self._info = info

    def openForReading(self) -> BinaryIO:
        return self._handle

    def getFileSize(self) -> int:
        return self._info.st_size

    def restat(self, reraise: bool = True) -> None:
        pass

    def exists(self) -> bool:
        return True

    def isdir(self) -> bool:
        return False

    def getModificationTime(self) -> float:
        return self._info.st_mtime
