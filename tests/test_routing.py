"""Crow's route patterns: parsing, typed segments and precedence, as plain calls."""

from __future__ import annotations

import pytest

from crowtwist import Crow
from crowtwist._routing import PARAM_TYPES, RouteNode, parse_pattern, path_segments


def tree(*patterns: str) -> RouteNode[str]:
    root: RouteNode[str] = RouteNode()
    for pattern in patterns:
        node = root
        for segment in parse_pattern(pattern):
            node = node.child(segment, RouteNode)
        node.endpoint = pattern
    return root


def match(root: RouteNode[str], path: str) -> tuple[str, list[object]] | None:
    found = root.match(path[1:].split("/"))
    return None if found is None else (found[0].endpoint or "", found[1])


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("chat", "must start with '/'"),
        ("/chat/<integer>", "unknown parameter type <integer>"),
        ("/chat/<int", "is not closed with '>'"),
        ("/a/id<int>", "mixes text and a parameter"),
        ("/<path>/x", "<path> must be the last segment"),
    ],
)
def test_malformed_pattern_names_itself(pattern: str, message: str) -> None:
    """A malformed pattern raises ValueError naming the pattern when the route is declared."""
    with pytest.raises(ValueError) as info:
        Crow().route(pattern)
    assert repr(pattern) in str(info.value)
    assert message in str(info.value)


def test_every_crow_type_name_is_known() -> None:
    """Crow's type names and their aliases all parse."""
    assert set(PARAM_TYPES) == {"int", "uint", "double", "float", "string", "str", "path"}


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("42", 42),
        ("-42", -42),
        ("+7", 7),
        (str(2**63 - 1), 2**63 - 1),
        (str(-(2**63)), -(2**63)),
        (str(2**63), None),
        ("4x", None),
        ("", None),
        ("1_000", None),
        (" 1", None),
    ],
)
def test_int_is_signed_64_bit(segment: str, expected: int | None) -> None:
    """<int> takes a signed 64-bit decimal; out of range or other text is no match."""
    result = match(tree("/n/<int>"), f"/n/{segment}")
    assert (result[1][0] if result else None) == expected


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("0", 0), ("+5", 5), (str(2**64 - 1), 2**64 - 1), (str(2**64), None), ("-1", None)],
)
def test_uint_is_unsigned_64_bit(segment: str, expected: int | None) -> None:
    """<uint> takes an unsigned 64-bit decimal and no minus sign."""
    result = match(tree("/n/<uint>"), f"/n/{segment}")
    assert (result[1][0] if result else None) == expected


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("1.5", 1.5), ("-2", -2.0), (".5", 0.5), ("1e3", 1000.0), ("1e400", None), ("1e-400", None),
     ("abc", None), ("1_0", None), ("0", 0.0)],
)
def test_double_follows_strtod(segment: str, expected: float | None) -> None:
    """<double> and <float> take what strtod takes, and no match when it reports a range error."""
    for name in ("double", "float"):
        result = match(tree(f"/n/<{name}>"), f"/n/{segment}")
        assert (result[1][0] if result else None) == expected


def test_string_and_path() -> None:
    """<string> takes one non-empty segment; <path> takes the rest, slashes included."""
    root = tree("/s/<string>", "/p/<path>")
    assert match(root, "/s/hello") == ("/s/<string>", ["hello"])
    assert match(root, "/s/") is None
    assert match(root, "/s/a/b") is None
    assert match(root, "/p/a/b/c") == ("/p/<path>", ["a/b/c"])
    assert match(root, "/p") is None


def test_static_beats_typed_and_first_typed_wins() -> None:
    """A static segment beats a typed one; among typed ones the earliest declared wins."""
    root = tree("/u/<string>", "/u/<int>", "/u/me")
    assert match(root, "/u/me") == ("/u/me", [])
    assert match(root, "/u/5") == ("/u/<string>", ["5"])


def test_precedence_backtracks() -> None:
    """A branch that cannot match the rest of the path gives way to the next one, as in Crow's trie."""
    root = tree("/a/<int>/x", "/a/<string>/y", "/a/b/x")
    assert match(root, "/a/5/x") == ("/a/<int>/x", [5])
    assert match(root, "/a/5/y") == ("/a/<string>/y", ["5"])
    assert match(root, "/a/b/y") == ("/a/<string>/y", ["b"])
    assert match(root, "/a/b/z") is None


def test_root_and_trailing_slash_are_distinct() -> None:
    """'/' is the empty segment, and '/a/' is not '/a'."""
    root = tree("/", "/a")
    assert match(root, "/") == ("/", [])
    assert match(root, "/a") == ("/a", [])
    assert match(root, "/a/") is None


def test_duplicate_rules_are_refused() -> None:
    """Two rules of one kind on the same path raise ValueError naming the pattern."""
    app = Crow()
    app.route("/x/<int>").websocket()
    with pytest.raises(ValueError, match=r"'/x/<int>'.*WebSocket rule"):
        app.route("/x/<int>").websocket()
    app.route("/s/<str>")(lambda req, s: s)
    with pytest.raises(ValueError, match=r"'/s/<string>'.*HTTP rule for GET"):
        app.route("/s/<string>")(lambda req, s: s)
    # Another kind, or another method, on the same path is fine.
    app.route("/x/<int>")(lambda req, n: str(n))
    app.route("/s/<str>").methods("POST")(lambda req, s: s)


def test_backtracking_leaves_no_params_behind() -> None:
    """A branch that converted segments and then failed leaves nothing in the params of the branch that wins."""
    root = tree("/<string>/<int>/<int>/x", "/<int>/<int>/<int>/y", "/<double>/z")
    assert match(root, "/1/2/3/y") == ("/<int>/<int>/<int>/y", [1, 2, 3])
    assert match(root, "/1/2/3/x") == ("/<string>/<int>/<int>/x", ["1", 2, 3])
    assert match(root, "/1/z") == ("/<double>/z", [1.0])
    assert match(root, "/1/2/3/z") is None


def test_string_is_one_segment_even_unescaped() -> None:
    """A <string> never holds a slash, as in Crow: an unescaped %2F does not make one."""
    root = tree("/s/<string>", "/p/<path>")
    assert root.match(["s", "a/b"]) is None
    assert root.match(["p", "a/b"]) is not None


def test_path_takes_anything_but_nothing() -> None:
    """<path> takes the rest, empty segments included, as long as it is not empty (Crow's rule)."""
    root = tree("/p/<path>")
    assert match(root, "/p//x") == ("/p/<path>", ["/x"])
    assert match(root, "/p//") == ("/p/<path>", ["/"])
    assert match(root, "/p/x/") == ("/p/<path>", ["x/"])
    assert match(root, "/p/") is None


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        (b"/", [""]),
        (b"/a//b/", ["a", "", "b", ""]),
        (b"/caf%C3%A9/a%2Fb", ["café", "a/b"]),
        (b"/%FF", None),
        (b"a", None),
        (b"http://host/a", None),
        (b"", None),
    ],
)
def test_path_segments(path: bytes, segments: list[str] | None) -> None:
    """Request paths split as twisted.web splits them, unquoted and UTF-8; no segments where no route can match."""
    assert path_segments(path) == segments
