"""``Request`` (Crow's ``crow::request``) over twisted.web's request, with query strings and multipart forms.

``Request.of(raw)`` wraps a twisted.web ``Request`` once; what the wrapper
does not define itself it reads from, and writes to, the raw request.

``QueryString`` is Crow's ``crow::query_string``: ``get``, ``get_list``,
``get_dict`` and their ``pop`` kin, over ``a=1&b[]=2&c[k]=3``, percent- and
``+``-decoded as ``urllib.parse`` does, and bounded in its number of pairs
(Crow's bound, 256), past which it answers 400 where Crow drops the rest.

``MultipartMessage`` is Crow's ``crow::multipart::message``, parsed as the
body streams by (RFC 2046 section 5.1, RFC 7578): the body is read from
twisted.web's spool in chunks, each part's content held in memory up to a
bound and written to a temporary file past it, so an upload of any size
never sits in memory whole.  Temporary files go when the request finishes.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar
from urllib.parse import quote, unquote_to_bytes

from ._peer import peer_host
from ._response import BadRequest

__all__ = [
    "MAX_PARAMS",
    "Headers",
    "MultipartLimits",
    "MultipartMessage",
    "MultipartParser",
    "Part",
    "QueryString",
    "Request",
    "multipart_boundary",
    "parse_header_params",
]

MAX_PARAMS = 256
"""Crow's ``query_string::MAX_KEY_VALUE_PAIRS_COUNT``: at most this many pairs in a query string or form."""

READ_SIZE = 64 * 1024
"""How much of a spooled body is read at a time."""


# Headers.


class Headers(Mapping[str, str]):
    """Header fields by name, case-insensitively: the first value of each; ``get_all`` for every one.

    Values are text as sent, one character per byte (ISO-8859-1, which RFC
    9110 section 5.5 leaves field values to).
    """

    __slots__ = ("_lookup", "_names")

    def __init__(self, lookup: Callable[[str], list[str]], names: Callable[[], list[str]]) -> None:
        self._lookup = lookup
        self._names = names

    @classmethod
    def of_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Headers holding ``pairs`` (name, value), in order."""
        by_name: dict[str, list[str]] = {}
        names: list[str] = []
        for name, value in pairs:
            key = name.lower()
            if key not in by_name:
                by_name[key] = []
                names.append(name)
            by_name[key].append(value)
        return cls(lambda name: by_name.get(name.lower(), []), lambda: names)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order sent; ``[]`` if none."""
        return list(self._lookup(name))

    def __getitem__(self, name: str) -> str:
        values = self._lookup(name) if isinstance(name, str) else []
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._lookup(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"Headers({[(name, value) for name in self for value in self.get_all(name)]!r})"


def _header_text(value: bytes) -> str:
    """A header value as text: UTF-8 where it is (what clients send, and what Crow hands on), else one character per byte."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _twisted_headers(headers: Any) -> Headers:
    """A live view of a twisted.web ``Headers``."""

    def lookup(name: str) -> list[str]:
        try:
            raw = name.encode("latin-1")
        except UnicodeEncodeError:
            return []
        return [_header_text(value) for value in headers.getRawHeaders(raw, [])]

    def names() -> list[str]:
        return [name.decode("latin-1") for name, _ in headers.getAllRawHeaders()]

    return Headers(lookup, names)


# Header parameters: Content-Type's boundary, Content-Disposition's name and filename.


def parse_header_params(value: str, what: str = "header") -> tuple[str, dict[str, str]]:
    """A header value's leading value (lower-cased) and its ``; name=value`` parameters (names lower-cased).

    Quoted values lose their quotes, and ``\\"`` and ``\\\\`` in them become
    ``"`` and ``\\``; any other backslash stays, as browsers send Windows paths
    unescaped.  ``name*=charset'lang'pct-encoded`` (RFC 8187) is decoded
    into ``name*``.  ``BadRequest`` for a parameter given twice (which an
    attacker could use to make two parsers disagree), an unterminated quote,
    or a bad extended value; ``what`` names the header in the message.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i == n:
            break
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        name = rest[start:i].strip().lower()
        param = ""
        if i < n and rest[i] == "=":
            i += 1
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and rest[i] != '"':
                    if rest[i] == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                        i += 1
                    chars.append(rest[i])
                    i += 1
                if i == n:
                    raise BadRequest(f"{what}: unterminated quoted value of parameter {name!r}")
                i += 1
                param = "".join(chars)
                while i < n and rest[i] != ";":
                    i += 1  # junk after a quoted value: ignored, as RFC 9110 parsers do
            else:
                start = i
                while i < n and rest[i] != ";":
                    i += 1
                param = rest[start:i].strip()
        if not name:
            continue
        if name in params:
            raise BadRequest(f"{what}: parameter {name!r} given twice")
        if name.endswith("*"):
            param = _extended_value(param, name, what)
        params[name] = param
    return main.strip().lower(), params


def _extended_value(value: str, name: str, what: str) -> str:
    # RFC 8187 section 3.2: charset "'" [ language ] "'" value-chars
    charset, quote1, rest = value.partition("'")
    _, quote2, encoded = rest.partition("'")
    if not (quote1 and quote2) or charset.lower() not in ("utf-8", "iso-8859-1"):
        raise BadRequest(f"{what}: parameter {name!r} is not charset'language'value in UTF-8 or ISO-8859-1")
    try:
        return unquote_to_bytes(encoded).decode(charset)
    except UnicodeDecodeError:
        raise BadRequest(f"{what}: parameter {name!r} is not valid {charset}") from None


# Query strings.


class QueryString:
    """Crow's ``crow::query_string``: the ``name=value`` pairs of a query string or a form body.

    Pairs are split at ``&`` and at each pair's first ``=``; names and
    values are percent-decoded, ``+`` read as a space, then decoded as UTF-8:
    what ``urllib.parse.parse_qsl(text, keep_blank_values=True)`` gives.  A
    pair without ``=`` has the value ``""``; empty pairs (``a=1&&b=2``) are
    skipped.  Where Crow differs: a ``%`` not followed by two hex digits
    stays as it is (Crow cuts the value there); names are decoded too (Crow's
    ``keys()`` gives them raw); more than ``max_params`` pairs, or a name or
    value that is not UTF-8 once decoded, is a ``BadRequest`` (400) rather
    than pairs silently dropped or mangled.
    """

    __slots__ = ("_pairs",)

    def __init__(self, text: str | bytes = "", *, max_params: int = MAX_PARAMS, what: str = "query string") -> None:
        """Parse ``text``: bytes as sent, or a ``str`` (taken as its UTF-8)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        pieces = [piece for piece in data.split(b"&") if piece]
        if len(pieces) > max_params:
            raise BadRequest(f"{what} has {len(pieces)} parameters; at most {max_params} are taken")
        self._pairs: list[tuple[str, str]] = [_pair(piece, what) for piece in pieces]

    def get(self, name: str) -> str | None:
        """The value of the first ``name`` pair, or ``None`` (``?name=value``)."""
        for key, value in self._pairs:
            if key == name:
                return value
        return None

    def pop(self, name: str) -> str | None:
        """Like ``get``, and removes that pair."""
        for index, (key, value) in enumerate(self._pairs):
            if key == name:
                del self._pairs[index]
                return value
        return None

    def get_list(self, name: str, use_brackets: bool = True) -> list[str]:
        """The values of every ``name[]`` pair (``name`` when ``use_brackets`` is false), in order."""
        key = name + "[]" if use_brackets else name
        return [value for k, value in self._pairs if k == key]

    def pop_list(self, name: str, use_brackets: bool = True) -> list[str]:
        """Like ``get_list``, and removes those pairs."""
        key = name + "[]" if use_brackets else name
        found = [value for k, value in self._pairs if k == key]
        self._pairs = [pair for pair in self._pairs if pair[0] != key]
        return found

    def get_dict(self, name: str) -> dict[str, str]:
        """``{key: value}`` of the ``name[key]=value`` pairs, ``key`` not empty; the first of a repeated key wins."""
        found: dict[str, str] = {}
        for key, value in self._pairs:
            sub = _dict_key(key, name)
            if sub is not None:
                found.setdefault(sub, value)
        return found

    def pop_dict(self, name: str) -> dict[str, str]:
        """Like ``get_dict``, and removes every ``name[key]`` pair."""
        found = self.get_dict(name)
        self._pairs = [pair for pair in self._pairs if _dict_key(pair[0], name) is None]
        return found

    def keys(self) -> list[str]:
        """Every pair's name, in order, repeated names repeated (Crow's)."""
        return [key for key, _ in self._pairs]

    def items(self) -> list[tuple[str, str]]:
        """Every pair, in order."""
        return list(self._pairs)

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __str__(self) -> str:
        """The pairs as a query string again (``a=1&b=x+y``)."""
        return "&".join(f"{quote(k, safe='[]').replace('%20', '+')}={quote(v).replace('%20', '+')}"
                        for k, v in self._pairs)

    def __repr__(self) -> str:
        return f"QueryString({str(self)!r})"


def _pair(piece: bytes, what: str) -> tuple[str, str]:
    name, _, value = piece.partition(b"=")
    try:
        return _unquote(name), _unquote(value)
    except UnicodeDecodeError:
        raise BadRequest(f"{what} parameter {piece[:60].decode('latin-1')!r} is not UTF-8 once decoded") from None


def _unquote(data: bytes) -> str:
    return unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8")


def _dict_key(key: str, name: str) -> str | None:
    if not key.startswith(name + "["):
        return None
    sub, close, rest = key[len(name) + 1:].partition("]")
    return sub if close and not rest and sub else None


# Multipart bodies.


@dataclass(frozen=True)
class MultipartLimits:
    """Bounds on a multipart body's parse; past any, ``BadRequest`` (except ``spool_size``, which spools)."""

    spool_size: int = 1 << 20
    """A part's content is held in memory up to this many bytes, and written to a temporary file past it."""
    max_memory: int = 16 << 20
    """All parts held in memory together stay under this; the parts past it go to temporary files."""
    max_parts: int = 1000
    """At most this many parts (Werkzeug's default)."""
    max_header_size: int = 16 * 1024
    """A part's header section (its lines and their ends) may be this long (twisted.web's bound on a request head)."""
    temp_dir: str | None = None
    """Where the temporary files go: ``tempfile``'s default (``TMPDIR``) when ``None``."""


class Part:
    """One part of a multipart body: its name, filename, headers and content.

    ``body`` is the content as ``bytes``: held in memory for a small part,
    read from its temporary file (all of it, each time) for a part past
    ``MultipartLimits.spool_size``, whose ``path`` says where it is (``None``
    for a part in memory).  ``file`` is a binary file object over the
    content, opened at the first use and positioned at its start then;
    ``save(path)`` puts the content at ``path`` without loading it: a
    temporary file is moved there.  ``size`` is the content's length.
    """

    __slots__ = ("name", "filename", "headers", "size", "_body", "_path", "_temp", "_file")

    def __init__(
        self,
        name: str = "",
        filename: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        path: str | None = None,
        size: int | None = None,
    ) -> None:
        self.name = name
        self.filename = filename
        """The ``filename`` (or ``filename*``) of ``Content-Disposition``, ``None`` when there is none."""
        self.headers = headers if headers is not None else Headers.of_pairs(())
        self._body = body if path is None else None
        self._path = path
        self._temp = path is not None
        self._file: IO[bytes] | None = None
        self.size = len(body) if size is None else size

    @property
    def content_type(self) -> str:
        """The part's ``Content-Type``; ``text/plain`` when it has none (RFC 7578 section 4.4)."""
        return self.headers.get("Content-Type", "text/plain")

    @property
    def path(self) -> str | None:
        """Where the content is on disk (a temporary file, or where ``save`` moved it); ``None`` in memory."""
        return self._path

    @property
    def body(self) -> bytes:
        """The whole content: for a part on disk, read from the file at each use."""
        if self._body is not None:
            return self._body
        with open(self._where(), "rb") as stream:
            return stream.read()

    @property
    def file(self) -> IO[bytes]:
        """A binary file object over the content, at its start when first opened."""
        if self._file is None:
            self._file = io.BytesIO(self._body) if self._body is not None else open(self._where(), "rb")
        return self._file

    def save(self, path: str | os.PathLike[str]) -> None:
        """Put the content at ``path``: a temporary file is moved (copied across file systems), memory written."""
        target = os.fspath(path)
        if self._body is not None:
            with open(target, "wb") as stream:
                stream.write(self._body)
            return
        where = self._where()
        if self._temp:
            if self._file is not None:
                self._file.close()  # Windows cannot move an open file; reopened on the next use
                self._file = None
            shutil.move(where, target)
            self._path, self._temp = target, False
        else:
            shutil.copyfile(where, target)

    def _where(self) -> str:
        if self._path is None:
            raise ValueError(
                f"part {self.name!r}'s content is gone: its temporary file was removed when the message was closed"
                " (a request's, when the request finished); save() it before"
            )
        return self._path

    def close(self) -> None:
        """Close ``file`` and remove the temporary file, if any (not one ``save`` moved away)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._temp and self._path is not None:
            _remove(self._path)
            self._path, self._temp = None, False

    def __repr__(self) -> str:
        where = f"on disk at {self._path}" if self._path is not None else "in memory"
        return f"<Part {self.name!r} filename={self.filename!r} {self.size} bytes {where}>"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class MultipartMessage:
    """Crow's ``crow::multipart::message``: the parts of a ``multipart/*`` body, in order and by name.

    ``part_map`` maps each name to its first part; ``get_all(name)`` gives
    every part of that name.  ``get_part_by_name`` answers an empty part
    (no headers, ``body == b""``) for a name no part has, as Crow does; ``name
    in message`` tells them apart.  ``close()`` removes the temporary files;
    a request's message is closed when the request finishes.
    """

    def __init__(self, boundary: str, parts: list[Part], headers: Headers | None = None) -> None:
        self.boundary = boundary
        self.parts = parts
        self.headers = headers if headers is not None else Headers.of_pairs(())
        """The request's headers (Crow's ``message.headers``)."""
        self.part_map: dict[str, Part] = {}
        for part in parts:
            self.part_map.setdefault(part.name, part)
        # Temporary files go even if the message is dropped without close().
        self._finalizer = weakref.finalize(self, _close_parts, list(parts))

    @classmethod
    def parse(
        cls,
        chunks: Iterable[bytes],
        content_type: str,
        limits: MultipartLimits = MultipartLimits(),
        headers: Headers | None = None,
    ) -> MultipartMessage:
        """Parse a body given as ``chunks`` (of any sizes), of type ``content_type``; ``BadRequest`` if malformed."""
        boundary = multipart_boundary(content_type)
        parser = MultipartParser(boundary.encode("ascii"), limits)
        try:
            for chunk in chunks:
                parser.feed(chunk)
            parts = parser.close()
        except BaseException:
            parser.abort()
            raise
        return cls(boundary, parts, headers)

    def get_part_by_name(self, name: str) -> Part:
        """The first part named ``name``; an empty part if there is none (Crow's)."""
        return self.part_map.get(name) or Part()

    def get_all(self, name: str) -> list[Part]:
        """Every part named ``name``, in order."""
        return [part for part in self.parts if part.name == name]

    def get_header_value(self, name: str) -> str:
        """The request's header ``name``, or ``""`` (Crow's)."""
        return self.headers.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self.part_map

    def close(self) -> None:
        """Close the parts' files and remove their temporary files."""
        self._finalizer()

    def __enter__(self) -> MultipartMessage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MultipartMessage boundary={self.boundary!r} parts={self.parts!r}>"


def _close_parts(parts: list[Part]) -> None:
    for part in parts:
        part.close()


def multipart_boundary(content_type: str) -> str:
    """The boundary of a ``multipart/*`` content type; ``BadRequest`` if it is not one or has no valid boundary.

    RFC 2046 section 5.1.1: 1 to 70 characters, not ending in a space;
    checked here as printable ASCII.
    """
    media, params = parse_header_params(content_type, "Content-Type")
    if not media.startswith("multipart/"):
        raise BadRequest(f"request body is not multipart: Content-Type is {content_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("multipart Content-Type has no boundary")
    if len(boundary) > 70 or boundary.endswith(" ") or not all(" " <= c <= "~" for c in boundary):
        raise BadRequest(f"multipart boundary {boundary[:80]!r} is not 1 to 70 printable ASCII characters")
    return boundary


_PREAMBLE, _DELIMITER, _HEADERS, _CONTENT, _EPILOGUE = range(5)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class MultipartParser:
    """A multipart body parser fed in chunks of any sizes; memory bounded by ``MultipartLimits``.

    ``feed`` each chunk, then ``close()`` for the parts; either may raise
    ``BadRequest``, after which ``abort()`` removes what was spooled.  Delimiters
    are RFC 2046's: ``CRLF--boundary`` (or ``--boundary`` at the very start),
    then ``--`` for the last, or optional spaces and tabs and CRLF.  A
    ``CRLF--boundary`` followed by anything else is content.  What precedes
    the first delimiter and follows the last is ignored.
    """

    _MAX_PADDING = 1024
    """Spaces and tabs allowed between a boundary and its line end (RFC 2046's transport padding)."""

    def __init__(self, boundary: bytes, limits: MultipartLimits = MultipartLimits()) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._limits = limits
        self._state = _PREAMBLE
        # A line end before the body, so that a first boundary at its start is found as any other.
        self._buffer = bytearray(b"\r\n")
        self._seen = 0
        self._parts: list[Part] = []
        self._part_open = False
        self._memory = 0
        self._head: tuple[str, str | None, Headers] | None = None
        self._content = bytearray()
        self._spool: IO[bytes] | None = None
        self._spool_path: str | None = None
        self._size = 0

    def feed(self, data: bytes) -> None:
        """Parse ``data``, the next bytes of the body."""
        self._seen += len(data)
        self._buffer += data
        self._run()

    def close(self) -> list[Part]:
        """The parts, once the whole body was fed; ``BadRequest`` if it ends early."""
        self._run()
        if self._state != _EPILOGUE:
            if self._seen == 0:
                raise BadRequest("multipart body is empty")
            if self._state == _PREAMBLE:
                boundary = self._delimiter[4:].decode("ascii")
                raise BadRequest(f"multipart body has no boundary line: --{boundary} and a CRLF line end")
            raise BadRequest("multipart body ends before its closing boundary (--boundary--): truncated?")
        return self._parts

    def abort(self) -> None:
        """Remove the temporary files of the parts parsed so far."""
        self._drop_spool()
        _close_parts(self._parts)

    def _run(self) -> None:
        buffer = self._buffer
        while True:
            state = self._state
            if state == _EPILOGUE:
                buffer.clear()
                return
            if state == _HEADERS:
                if not self._headers():
                    return
                continue
            if state == _DELIMITER:
                if not self._after_delimiter():
                    return
                continue
            # _PREAMBLE or _CONTENT: look for the next delimiter.
            at = buffer.find(self._delimiter)
            if at < 0:
                keep = len(self._delimiter) - 1  # the start of a delimiter cut by the chunk's end
                if len(buffer) > keep:
                    self._emit(bytes(buffer[: len(buffer) - keep]))
                    del buffer[: len(buffer) - keep]
                return
            self._emit(bytes(buffer[:at]))
            del buffer[:at]
            self._state = _DELIMITER

    def _emit(self, data: bytes) -> None:
        if self._state == _CONTENT and data:
            self._write(data)

    def _after_delimiter(self) -> bool:
        # The buffer starts with the delimiter: is it one, what kind, and is there enough to tell?
        buffer, start = self._buffer, len(self._delimiter)
        after = bytes(buffer[start : start + 2 + self._MAX_PADDING])
        if after.startswith(b"--"):
            self._end_part()
            self._state = _EPILOGUE
            return True
        padding = len(after) - len(after.lstrip(b" \t"))
        rest = after[padding:]
        if rest.startswith(b"\r\n"):
            self._end_part()
            del buffer[: start + padding + 2]
            self._state = _HEADERS
            return True
        if rest in (b"", b"\r") or after == b"-":
            if padding >= self._MAX_PADDING:
                raise BadRequest(f"multipart boundary line has more than {self._MAX_PADDING} bytes of padding")
            return False  # more to come; at the end, close() says the body is truncated
        # "--boundary" then something else: not a delimiter, but content (or preamble).
        previous = _CONTENT if self._part_open else _PREAMBLE
        self._state = previous
        self._emit(bytes(buffer[:1]))
        del buffer[:1]
        return True

    def _headers(self) -> bool:
        buffer, limit = self._buffer, self._limits.max_header_size
        if buffer.startswith(b"\r\n"):
            end, skip = 0, 2
        else:
            end, skip = buffer.find(b"\r\n\r\n", 0, limit + 4), 4
        if end < 0:
            if len(buffer) >= limit + 4:
                raise BadRequest(f"multipart part {len(self._parts) + 1}'s header section is over {limit} bytes")
            return False
        head = bytes(buffer[:end])
        del buffer[: end + skip]
        if len(self._parts) >= self._limits.max_parts:
            raise BadRequest(f"multipart body has more than {self._limits.max_parts} parts")
        self._head = _parse_part_head(head, len(self._parts) + 1)
        self._part_open = True
        self._state = _CONTENT
        return True

    def _write(self, data: bytes) -> None:
        self._size += len(data)
        if self._spool is not None:
            self._spool.write(data)
            return
        limits = self._limits
        if len(self._content) + len(data) <= limits.spool_size and self._memory + len(data) <= limits.max_memory:
            self._content += data
            self._memory += len(data)
            return
        fd, self._spool_path = tempfile.mkstemp(prefix="crowtwist-part-", dir=limits.temp_dir)
        self._spool = os.fdopen(fd, "wb")
        self._spool.write(self._content)
        self._spool.write(data)
        self._memory -= len(self._content)
        self._content = bytearray()

    def _end_part(self) -> None:
        if not self._part_open:
            return
        assert self._head is not None
        name, filename, headers = self._head
        if self._spool is not None:
            self._spool.close()
            part = Part(name, filename, headers, path=self._spool_path, size=self._size)
            self._spool, self._spool_path = None, None
        else:
            part = Part(name, filename, headers, bytes(self._content))
        self._parts.append(part)
        self._content = bytearray()
        self._size = 0
        self._part_open = False

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._spool_path is not None:
            _remove(self._spool_path)
            self._spool_path = None


def _parse_part_head(head: bytes, number: int) -> tuple[str, str | None, Headers]:
    """A part's name, filename and headers from its header section; ``BadRequest`` if it has no name."""
    what = f"multipart part {number}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what}'s headers are not valid UTF-8") from None
    pairs: list[tuple[str, str]] = []
    for line in text.split("\r\n") if text else ():
        if line[:1] in (" ", "\t"):
            raise BadRequest(f"{what} has a folded header line (obsolete, RFC 9112 section 5.2)")
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise BadRequest(f"{what} has a malformed header line {line[:80]!r}")
        pairs.append((name, value.strip(" \t")))
    headers = Headers.of_pairs(pairs)
    dispositions = headers.get_all("Content-Disposition")
    if not dispositions:
        raise BadRequest(f"{what} has no Content-Disposition header")
    if len(dispositions) > 1:
        raise BadRequest(f"{what} has {len(dispositions)} Content-Disposition headers")
    _, params = parse_header_params(dispositions[0], f"{what}'s Content-Disposition")
    field = params.get("name*", params.get("name"))  # name* (RFC 2231) as Python's email package writes it
    if field is None:
        raise BadRequest(f"{what}'s Content-Disposition has no name")
    filename = params.get("filename*", params.get("filename"))
    return field, filename, headers


# The request.


class Request:
    """Crow's ``crow::request`` over twisted.web's ``Request`` (``raw``).

    ``Request.of(raw)`` gives the one wrapper of a request.  Attributes it
    does not define are ``raw``'s, read and written: ``req.write``,
    ``req.setHeader``, ``req.notifyFinish``, ``req.args`` are twisted.web's,
    and ``req.userdata = x`` sets ``raw.userdata``.
    """

    max_params: ClassVar[int] = MAX_PARAMS
    """Bound on the pairs of ``url_params`` and ``get_body_params()``; set on the class or on one request."""
    multipart_limits: ClassVar[MultipartLimits] = MultipartLimits()
    """The bounds ``multipart()`` parses with, unless it is given others."""

    raw: Any
    _body: bytes | None
    _url_params: QueryString | None
    _multipart: MultipartMessage | None
    _headers: Headers | None
    _head_hook: Callable[[], None] | None

    def __init__(self, raw: Any) -> None:
        own = object.__setattr__
        own(self, "raw", raw)
        own(self, "_body", None)
        own(self, "_url_params", None)
        own(self, "_multipart", None)
        own(self, "_headers", None)  # made when first read: most handlers never look
        own(self, "_head_hook", None)

    @classmethod
    def of(cls, raw: Any) -> Request:
        """The wrapper of ``raw``: made at the first call, the same object at every later one."""
        found = getattr(raw, "crowtwist_request", None)
        if isinstance(found, Request):
            return found
        wrapper = cls(raw)
        raw.crowtwist_request = wrapper
        return wrapper

    def __getattr__(self, name: str) -> Any:
        if name == "raw":  # not set yet: copying or unpickling
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name) or name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_url}>"

    # Answering the Twisted way: write, then finish, and return NOT_DONE_YET.

    def write(self, data: bytes) -> None:
        """Write part of the answer yourself (twisted.web's ``write``).

        The first write sends the status and headers; the middleware's
        ``after_handle`` runs just before it, so what they add goes out too.
        """
        self._head_goes()
        self.raw.write(data)

    def finish(self) -> None:
        """End an answer written with ``write`` (twisted.web's ``finish``)."""
        self._head_goes()
        self.raw.finish()

    def before_head(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once, before the first ``write`` or ``finish`` (how middleware unwinds for a stream)."""
        object.__setattr__(self, "_head_hook", callback)

    def _head_goes(self) -> None:
        hook = self._head_hook
        if hook is not None:
            object.__setattr__(self, "_head_hook", None)
            hook()

    # The request line.

    @property
    def method(self) -> str:
        """The method, as sent (``"GET"``)."""
        return bytes(self.raw.method).decode("latin-1")

    @property
    def raw_url(self) -> str:
        """The path and query as sent, not decoded (Crow's ``req.raw_url``); one character per byte."""
        return bytes(self.raw.uri).decode("latin-1")

    @property
    def url(self) -> str:
        """The path without the query, percent-decoded as routes match it (Crow's ``req.url``).

        Middleware that guards a prefix checks this: ``/%70rivate`` routes as
        ``/private``, and reads so here (``raw_url`` keeps what was sent).
        Bytes that are not UTF-8 once decoded read as U+FFFD (no route
        matches such a path).
        """
        return unquote_to_bytes(bytes(self.raw.path)).decode("utf-8", "replace")

    @property
    def url_params(self) -> QueryString:
        """The query's pairs (Crow's ``req.url_params``), parsed at the first use; a ``#`` ends the query, as in Crow."""
        if self._url_params is None:
            query = bytes(self.raw.uri).partition(b"?")[2].partition(b"#")[0]
            object.__setattr__(self, "_url_params", QueryString(query, max_params=self.max_params))
        assert self._url_params is not None
        return self._url_params

    # Headers and peer.

    @property
    def headers(self) -> Headers:
        """The request's headers, case-insensitively: the first value of each; ``headers.get_all(name)`` for all."""
        headers = self._headers
        if headers is None:
            headers = _twisted_headers(self.raw.requestHeaders)
            object.__setattr__(self, "_headers", headers)
        return headers

    def get_header_value(self, name: str) -> str:
        """The first value of header ``name``, or ``""`` (Crow's)."""
        return self.headers.get(name, "")

    def get_header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (several ``Cookie`` lines, say)."""
        return self.headers.get_all(name)

    @property
    def remote_ip_address(self) -> str:
        """The client's IP address (a UNIX socket's path; ``""`` when unknown)."""
        return peer_host(self.raw.getClientAddress())

    @property
    def route_params(self) -> list[Any]:
        """The route's typed parameters, as the route tree put them on the request; ``[]`` otherwise."""
        params: list[Any] = getattr(self.raw, "route_params", [])
        return params

    # The body.

    def _content(self) -> IO[bytes]:
        content: IO[bytes] | None = getattr(self.raw, "content", None)
        if content is None or content.closed:
            raise RuntimeError("the request's body is gone: twisted.web drops it when the request finishes")
        return content

    def _chunks(self) -> Generator[bytes, None, None]:
        content = self._content()
        content.seek(0)
        try:
            while chunk := content.read(READ_SIZE):
                yield chunk
        finally:
            content.seek(0)  # where twisted.web leaves it for the next reader

    @property
    def body(self) -> bytes:
        """The whole body, read at the first use (twisted.web spools one over 100 kB to a file)."""
        if self._body is None:
            object.__setattr__(self, "_body", b"".join(self._chunks()))
        assert self._body is not None
        return self._body

    def json(self) -> Any:
        """The body as JSON; ``BadRequest`` if it is empty, not UTF-8, not JSON, or nested too deeply."""
        body = self.body
        try:
            if not body:
                raise ValueError("the body is empty")
            return json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite,
                              parse_int=_bounded_int)
        except RecursionError:
            raise BadRequest("request body is not valid JSON: nested too deeply") from None
        except ValueError as why:  # JSONDecodeError, UnicodeDecodeError and our number checks are ValueErrors
            raise BadRequest(f"request body is not valid JSON: {why}") from None

    def get_body_params(self) -> QueryString:
        """An ``application/x-www-form-urlencoded`` body's pairs (Crow's); ``BadRequest`` for another type."""
        content_type = self.get_header_value("Content-Type")
        media, _ = parse_header_params(content_type, "Content-Type")
        if media != "application/x-www-form-urlencoded":
            raise BadRequest(
                f"request body is not a form: Content-Type is {content_type!r}, not application/x-www-form-urlencoded"
            )
        return QueryString(self.body, max_params=self.max_params, what="form body")

    def multipart(self, limits: MultipartLimits | None = None) -> MultipartMessage:
        """The body's parts (Crow's ``crow::multipart::message(req)``), parsed at the first call, streamed.

        Parts over ``limits.spool_size`` go to temporary files, removed when
        the request finishes.  ``BadRequest`` for a body that is not
        multipart or is malformed.  Later calls give the same message.
        """
        if self._multipart is None:
            content_type = self.get_header_value("Content-Type")
            chunks = self._chunks()
            try:
                message = MultipartMessage.parse(chunks, content_type, limits or self.multipart_limits, self.headers)
            finally:
                chunks.close()
            object.__setattr__(self, "_multipart", message)
            finished = getattr(self.raw, "notifyFinish", None)
            if finished is not None:
                finished().addBoth(_close_then, message)
        assert self._multipart is not None
        return self._multipart


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]!r} is too large for a float")
    return value


_MAX_INT_DIGITS = 4000


def _bounded_int(text: str) -> int:
    # Python's own limit (4300 digits) raises with a message about sys.set_int_max_str_digits.
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is more than {_MAX_INT_DIGITS}")
    return int(text)


def _close_then(result: object, message: MultipartMessage) -> None:
    # A lost connection errbacks notifyFinish: the failure is swallowed here, having nothing to tell.
    message.close()
