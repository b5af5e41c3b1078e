"""Crow's URL patterns: parsing ``/chat/<int>``, converting typed segments, matching.

Pure functions and plain data; nothing here knows about Twisted, so the rules
are tested with plain calls.  A pattern is split on ``/`` the way twisted.web
splits a request path (``path_segments``): ``"/"`` is the single empty
segment, ``"/a/"`` is ``["a", ""]``.  Request segments are percent-decoded
and UTF-8 before they are matched, so ``<string>`` and ``<path>`` values
arrive decoded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from collections.abc import Callable, Sequence
from urllib.parse import unquote_to_bytes

__all__ = [
    "DOUBLE",
    "INT",
    "PATH",
    "STRING",
    "UINT",
    "ParamType",
    "ParamValue",
    "PARAM_TYPES",
    "RouteNode",
    "Segment",
    "parse_pattern",
    "path_segments",
]

ParamValue = int | float | str

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

# strtoll/strtoull accept an optional sign and decimal digits; Crow only hands
# them segments whose first character is a digit or a sign (its trie checks).
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_UINT_RE = re.compile(r"\+?[0-9]+\Z")
# strtod's decimal and special forms.  Python's float() would also take
# underscores and surrounding blanks, which strtod does not.
_DOUBLE_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)\Z",
    re.IGNORECASE,
)
_NONZERO_DIGIT_BEFORE_EXPONENT = re.compile(r"^[^eE]*[1-9]")


def _integer(text: str) -> int | None:
    # int() of thousands of digits raises (Python's 4300-digit limit) and costs time: no
    # 64-bit value has more than 20 digits once leading zeros are gone.
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 20:
        return None
    return int(("-" if text[0] == "-" else "") + (digits or "0"))


def _to_int(text: str) -> int | None:
    if not _INT_RE.match(text):
        return None
    value = _integer(text)
    return value if value is not None and _INT64_MIN <= value <= _INT64_MAX else None


def _to_uint(text: str) -> int | None:
    if not _UINT_RE.match(text):
        return None
    value = _integer(text)
    return value if value is not None and value <= _UINT64_MAX else None


def _to_double(text: str) -> float | None:
    if not text or text[0] not in "0123456789+-." or not _DOUBLE_RE.match(text):
        return None
    value = float(text)
    lowered = text.lower()
    literal_special = "inf" in lowered or "nan" in lowered
    # strtod reports ERANGE on overflow and underflow; Crow then has no match.
    if math.isinf(value) and not literal_special:
        return None
    if value == 0.0 and _NONZERO_DIGIT_BEFORE_EXPONENT.match(text):
        return None
    return value


def _to_string(text: str) -> str | None:
    # A segment is unquoted before it is matched, so "%2F" would put a slash in
    # it; Crow's <string> never holds one (handlers count on it: "..%2F.." is
    # not one segment), so such a segment is no <string>.
    return text if text and "/" not in text else None


def _to_path(text: str) -> str | None:
    return text if text else None


@dataclass(frozen=True)
class ParamType:
    """One of Crow's typed segments: its canonical name and its converter."""

    name: str
    convert: Callable[[str], ParamValue | None]

    def __repr__(self) -> str:
        return f"<{self.name}>"


INT = ParamType("int", _to_int)
UINT = ParamType("uint", _to_uint)
DOUBLE = ParamType("double", _to_double)
STRING = ParamType("string", _to_string)
PATH = ParamType("path", _to_path)

PARAM_TYPES: dict[str, ParamType] = {
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "float": DOUBLE,
    "string": STRING,
    "str": STRING,
    "path": PATH,
}

Segment = str | ParamType
"""A static segment is its text; a typed one is its ``ParamType``."""


def parse_pattern(pattern: str) -> tuple[Segment, ...]:
    """Split a Crow route pattern into segments, or raise ``ValueError`` naming it."""
    if not isinstance(pattern, str):
        raise TypeError(f"route pattern must be a str, not {type(pattern).__name__}")
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern {pattern!r} must start with '/'")
    segments: list[Segment] = []
    parts = pattern[1:].split("/")
    for index, part in enumerate(parts):
        if "<" in part or ">" in part:
            _check_brackets(pattern, part)
        if part.startswith("<") and part.endswith(">"):
            kind = PARAM_TYPES.get(part[1:-1].strip())
            if kind is None:
                known = ", ".join(f"<{name}>" for name in PARAM_TYPES)
                raise ValueError(
                    f"route pattern {pattern!r}: unknown parameter type {part} (known: {known})"
                )
            if kind is PATH and index != len(parts) - 1:
                raise ValueError(f"route pattern {pattern!r}: <path> must be the last segment")
            segments.append(kind)
        elif "<" in part or ">" in part:
            raise ValueError(
                f"route pattern {pattern!r}: segment {part!r} mixes text and a parameter;"
                " a parameter must be a whole segment"
            )
        else:
            segments.append(part)
    return tuple(segments)


def _check_brackets(pattern: str, part: str) -> None:
    """Raise ``ValueError`` for a segment whose ``<`` and ``>`` do not pair up, saying which one is amiss."""
    opened = -1
    for at, char in enumerate(part):
        if char == ">":
            if opened < 0:
                raise ValueError(f"route pattern {pattern!r}: in segment {part!r}, a '>' closes no '<'")
            opened = -1
        elif char == "<":
            if opened >= 0:
                break  # a second '<' before the first is closed
            opened = at
    if opened >= 0:
        name = part[opened + 1:].strip()
        hint = f" (did you mean <{name}>?)" if name in PARAM_TYPES else ""
        raise ValueError(f"route pattern {pattern!r}: the '<' of segment {part!r} is not closed with '>'{hint}")
    if part.count("<") > 1:
        raise ValueError(
            f"route pattern {pattern!r}: segment {part!r} holds more than one parameter;"
            " a parameter must be a whole segment"
        )


def path_segments(path: bytes) -> list[str] | None:
    """The segments routes are matched against, for a request path without its query.

    As twisted.web's ``Request.postpath`` has them (split on ``/`` after the
    leading one, each unquoted), decoded as UTF-8.  ``None`` where no route
    can match: a target not starting with ``/`` (twisted.web would drop its
    first byte and route the rest; Crow matches nothing), or a segment that
    is not UTF-8 once unquoted.
    """
    if path[:1] != b"/":
        return None
    try:
        return [unquote_to_bytes(s).decode("utf-8") for s in path[1:].split(b"/")]
    except UnicodeDecodeError:
        return None


T = TypeVar("T")


@dataclass(eq=False)
class RouteNode(Generic[T]):
    """One level of the route tree: static children, typed children, and what ends here.

    ``endpoint`` is whatever the caller stores for a route that ends at this
    node (crowtwist stores the HTTP and WebSocket rules).
    """

    static: dict[str, RouteNode[T]] = field(default_factory=dict)
    typed: list[tuple[ParamType, RouteNode[T]]] = field(default_factory=list)
    endpoint: T | None = None

    def child(self, segment: Segment, make: Callable[[], RouteNode[T]]) -> RouteNode[T]:
        """The child for ``segment``, created with ``make`` if missing."""
        if isinstance(segment, str):
            node = self.static.get(segment)
            if node is None:
                node = self.static[segment] = make()
            return node
        for kind, node in self.typed:
            if kind is segment:
                return node
        node = make()
        self.typed.append((segment, node))
        return node

    def match(self, segments: Sequence[str]) -> tuple[RouteNode[T], list[ParamValue]] | None:
        """The node that ``segments`` lead to and the converted parameters, or ``None``.

        Precedence: the static child first, then typed children in declaration
        order, backtracking when a branch cannot take the rest of the path.
        (Crow's trie differs: of all the routes that match, the earliest
        declared wins, static or not.)
        One depth-first search, recursing only at a choice with an alternative
        left, so never deeper than the route tree, whatever the path's length
        (``<path>`` takes the rest in one step).
        """
        params: list[ParamValue] = []
        node = self._find(segments, 0, params)
        return None if node is None else (node, params)

    def _find(self, segments: Sequence[str], index: int, params: list[ParamValue]) -> RouteNode[T] | None:
        # Iterative where there is no choice left (a node without typed
        # children, the last typed child); recursive only to try a branch that
        # has an alternative after it, which then truncates ``params`` back.
        node = self
        end = len(segments)
        while index < end:
            segment = segments[index]
            static = node.static.get(segment)
            typed = node.typed
            if not typed:
                if static is None:
                    return None
                node = static
                index += 1
                continue
            mark = len(params)
            if static is not None:
                found = static._find(segments, index + 1, params)
                if found is not None:
                    return found
                del params[mark:]
            last = typed[-1][1]
            for kind, child in typed:
                if kind is PATH:
                    # The rest of the path, slashes included; like Crow, anything but nothing.
                    if child.endpoint is not None and (segment or index + 1 < end):
                        params.append("/".join(segments[index:]))
                        return child
                    continue
                value = kind.convert(segment)
                if value is None:
                    continue
                params.append(value)
                if child is last:
                    break
                found = child._find(segments, index + 1, params)
                if found is not None:
                    return found
                del params[mark:]
            else:
                return None
            node = last
            index += 1
        return node if node.endpoint is not None else None
