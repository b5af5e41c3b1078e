"""Crow's request over twisted.web's: query strings, JSON and form bodies, streamed multipart uploads."""

from __future__ import annotations

import email.policy
import gc
import hashlib
import io
import json
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from email.encoders import encode_noop
from email.generator import BytesGenerator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from http.client import HTTPConnection
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from crowtwist._request import (
    MAX_PARAMS,
    Headers,
    MultipartLimits,
    MultipartMessage,
    MultipartParser,
    Part,
    QueryString,
    Request,
    multipart_boundary,
    parse_header_params,
)
from crowtwist._response import BadRequest, HTTPError
from crowtwist._site import CrowSite

from .clients import within

FORM = "multipart/form-data; boundary=XyZ"


def bad(call: Callable[[], object]) -> str:
    """The message of the BadRequest ``call`` raises."""
    with pytest.raises(BadRequest) as caught:
        call()
    return caught.value.message


def parse(body: bytes, content_type: str = FORM, chunk: int = 1 << 16, **limits: Any) -> MultipartMessage:
    """Parse ``body`` fed in ``chunk``-byte pieces."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return MultipartMessage.parse(pieces, content_type, MultipartLimits(**limits))


def field(name: str, content: bytes, filename: str | None = None, extra: str = "") -> bytes:
    """One hand-built part for boundary ``XyZ``."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--XyZ\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + content + b"\r\n"


END = b"--XyZ--\r\n"


# Query strings.


def test_query_string_crow_accessors() -> None:
    """get, get_list, get_dict, keys, in and len read a query string as Crow's query_string does."""
    qs = QueryString("a=1&a=2&list[]=x&list[]=y&d[k1]=v1&d[k2]=v2&d[k1]=late&flag&x=%41+b")
    assert qs.get("a") == "1" and qs.get("missing") is None
    assert qs.get_list("list") == ["x", "y"] and qs.get_list("a", use_brackets=False) == ["1", "2"]
    assert qs.get_dict("d") == {"k1": "v1", "k2": "v2"}  # the first of a repeated key, as Crow's map insert
    assert qs.get("flag") == "" and qs.get("x") == "A b"
    assert qs.keys() == ["a", "a", "list[]", "list[]", "d[k1]", "d[k2]", "d[k1]", "flag", "x"]
    assert "flag" in qs and "nope" not in qs and 3 not in qs and len(qs) == 9
    assert QueryString().items() == [] and len(QueryString("")) == 0


def test_query_string_pops_remove() -> None:
    """pop takes the first pair of a name, pop_list and pop_dict every pair they return."""
    qs = QueryString("a=1&a=2&l[]=x&l=y&l[]=z&d[k]=v&d[]=e&d=f&dx[k]=w")
    assert qs.pop("a") == "1" and qs.get("a") == "2" and qs.pop("zz") is None
    assert qs.pop_list("l") == ["x", "z"] and qs.get_list("l") == [] and qs.get("l") == "y"
    assert qs.pop_list("l", use_brackets=False) == ["y"] and "l" not in qs
    assert qs.pop_dict("d") == {"k": "v"}
    assert qs.keys() == ["a", "d[]", "d", "dx[k]"]  # not a d[key] pair: d[] is a list, dx[k] another dict


def test_query_string_dict_keys() -> None:
    """get_dict takes name[key] with a non-empty key and nothing after the bracket; encoded brackets count."""
    qs = QueryString("p[]=0&p[a]=1&p[b][c]=2&p[d]x=3&px[e]=4&p%5Bsize%5D=5&p=6")
    assert qs.get_dict("p") == {"a": "1", "size": "5"}


def test_query_string_text_and_repr() -> None:
    """str gives the pairs back as a query string; repr shows it."""
    qs = QueryString("b[]=x y&k=a%26b&e")
    assert str(qs) == "b[]=x+y&k=a%26b&e="
    assert QueryString(str(qs)).items() == qs.items()
    assert repr(qs) == "QueryString('b[]=x+y&k=a%26b&e=')"


def test_query_string_decoding_edges() -> None:
    """Percent escapes decode as UTF-8, '+' is a space, a bad escape stays as sent, empty pairs are skipped."""
    qs = QueryString("n=%E2%82%AC&p=a+b%2Bc&bad=%zz%4&&=v&%3D=eq&k=x=y")
    assert qs.items() == [("n", "€"), ("p", "a b+c"), ("bad", "%zz%4"), ("", "v"), ("=", "eq"), ("k", "x=y")]
    assert QueryString(b"raw=\xc3\xa9").get("raw") == "é"  # raw UTF-8 bytes in a body
    assert QueryString("euro=€&e=%E2%82%AC").items() == [("euro", "€"), ("e", "€")]  # a str is taken as UTF-8


def test_query_string_rejects_bad_utf8() -> None:
    """A name or value not UTF-8 once decoded is a BadRequest naming the pair, not a mangled value."""
    assert "'v=%FF' is not UTF-8" in bad(lambda: QueryString("ok=1&v=%FF"))
    assert "form body parameter" in bad(lambda: QueryString(b"\xe9=x", what="form body"))


def test_query_string_parameter_bound() -> None:
    """Crow's 256 pairs parse; one more is a BadRequest saying so (Crow drops the rest silently)."""
    assert MAX_PARAMS == 256
    assert len(QueryString("&".join(f"k{i}={i}" for i in range(256)))) == 256
    message = bad(lambda: QueryString("&".join(f"k{i}" for i in range(257))))
    assert message == "query string has 257 parameters; at most 256 are taken"
    assert len(QueryString("a&" * 300, max_params=300)) == 300
    assert len(QueryString("&" * 10_000 + "a=1")) == 1  # empty pairs are not counted


QUERY_ALPHABET = st.sampled_from(list("ab=&+%20%41%e2%82%ac%zz€ é[]#?;"))


@settings(max_examples=400, deadline=None)
@given(st.lists(QUERY_ALPHABET, max_size=40).map("".join))
def test_query_string_agrees_with_urllib(text: str) -> None:
    """Where urllib.parse can decode a query strictly, the pairs are its parse_qsl's; where not, a BadRequest."""
    try:
        expected = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(BadRequest):
            QueryString(text)
        return
    assert QueryString(text).items() == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=20))
def test_query_string_round_trips_urlencode(pairs: list[tuple[str, str]]) -> None:
    """Any pairs urlencode'd come back in order, as do the pairs of str(QueryString)."""
    qs = QueryString(urlencode(pairs))
    # urlencode writes an empty name and value as "=", which is a pair; only a fully empty query has none
    assert qs.items() == pairs
    assert QueryString(str(qs)).items() == pairs


# Header parameters.


def test_header_params() -> None:
    """Quoted values unquote (only \\" and \\\\ escape), tokens strip, names lower-case, filename* decodes."""
    main, params = parse_header_params(
        'Form-Data; Name="a;b"; filename="C:\\dir\\q\\"x\\\\y"; flag; k = v ; e="" junk; filename*=UTF-8\'en\'%E2%82%AC'
    )
    assert main == "form-data"
    assert params == {"name": "a;b", "filename": 'C:\\dir\\q"x\\y', "flag": "", "k": "v", "e": "",
                      "filename*": "€"}
    assert parse_header_params("text/plain") == ("text/plain", {})
    assert parse_header_params("x; ;=v; ") == ("x", {})


def test_header_params_refused() -> None:
    """A parameter given twice, an unterminated quote, or a bad extended value is a BadRequest."""
    assert "parameter 'name' given twice" in bad(lambda: parse_header_params('form-data; name="a"; NAME=b'))
    assert "unterminated quoted value" in bad(lambda: parse_header_params('form-data; name="a'))
    assert "charset'language'value" in bad(lambda: parse_header_params("a; filename*=koi8-r''x"))
    assert "charset'language'value" in bad(lambda: parse_header_params("a; filename*=%41"))
    assert "not valid utf-8" in bad(lambda: parse_header_params("a; filename*=utf-8''%FF"))
    assert parse_header_params("a; filename*=iso-8859-1''%E9")[1] == {"filename*": "é"}


def test_headers_mapping() -> None:
    """Headers look names up case-insensitively, give the first value, and every value with get_all."""
    headers = Headers.of_pairs([("X-A", "1"), ("x-a", "2"), ("B", "3")])
    assert headers["x-A"] == "1" and headers.get_all("X-a") == ["1", "2"] and headers.get_all("c") == []
    assert list(headers) == ["X-A", "B"] and len(headers) == 2 and "b" in headers and 1 not in headers
    assert headers.get(1, "none") == "none"  # type: ignore[call-overload]
    with pytest.raises(KeyError):
        headers["c"]
    assert repr(headers) == "Headers([('X-A', '1'), ('X-A', '2'), ('B', '3')])"


# Multipart bodies.


def test_multipart_parts() -> None:
    """Parts come in order with name, filename, headers, content type and content; preamble and epilogue ignored."""
    body = (
        b"preamble, ignored\r\n"
        + field("text", b"hello\r\nworld")
        + field("file", b"\x00\xff binary", "a b.txt", "Content-Type: image/png\r\n")
        + field("text", b"")
        + END
        + b"epilogue, ignored --XyZ\r\n"
    )
    with parse(body) as message:
        assert [p.name for p in message.parts] == ["text", "file", "text"]
        text, upload, empty = message.parts
        assert (text.body, text.filename, text.content_type, text.size) == (b"hello\r\nworld", None, "text/plain", 12)
        assert (upload.filename, upload.content_type, upload.headers["content-type"]) == ("a b.txt", "image/png", "image/png")
        assert upload.body == b"\x00\xff binary" and upload.path is None and upload.file.read() == b"\x00\xff binary"
        assert empty.body == b"" and empty.size == 0
        assert message.get_part_by_name("text") is text and message.part_map["text"] is text
        assert message.get_all("text") == [text, empty] and "file" in message and "nope" not in message
        assert message.boundary == "XyZ" and message.get_header_value("Content-Type") == ""
        assert "in memory" in repr(upload) and "XyZ" in repr(message)


def test_missing_part_is_empty() -> None:
    """get_part_by_name for a name no part has gives an empty part, as Crow's does, not a KeyError."""
    with parse(field("a", b"1") + END) as message:
        missing = message.get_part_by_name("b")
        assert (missing.name, missing.body, missing.filename, len(missing.headers), missing.size) == ("", b"", None, 0, 0)
        assert missing.content_type == "text/plain"


def test_first_boundary_and_padding() -> None:
    """The body may start with the boundary; spaces and tabs may pad a boundary line; a zero-part body is empty."""
    body = b"--XyZ \t\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ--"
    assert [p.body for p in parse(body).parts] == [b"1"]
    assert parse(b"--XyZ--\r\n").parts == []
    quoted = parse(field("a", b"1") + END, 'multipart/form-data; boundary="XyZ"')
    assert quoted.parts[0].body == b"1"


def test_boundary_lookalikes_are_content() -> None:
    """A boundary followed by anything but '--' or a line end, or not at a line start, is content."""
    content = b"x--XyZ\r\n\r\n--XyZzz\r\n--XyZ-\r\n--XyZ \tq\r\n"
    body = b"--XyZnot\r\n" + field("a", content) + END
    assert parse(body).parts[0].body == content
    for chunk in (1, 2, 3, 5, 8):
        assert parse(body, chunk=chunk).parts[0].body == content


def test_spooling_past_the_bound(tmp_path: Path) -> None:
    """A part past spool_size is written to a temporary file; file reads from its start; close removes it."""
    big = bytes(range(256)) * 40
    message = parse(field("big", big, "big.bin") + field("small", b"s") + END, chunk=1000,
                    spool_size=4096, temp_dir=str(tmp_path))
    large, small = message.parts
    assert large.path is not None and Path(large.path).parent == tmp_path and os.path.getsize(large.path) == len(big)
    assert large.size == len(big) and large.body == big and small.path is None and small.body == b"s"
    assert large.file.read(10) == big[:10] and large.file.read(5) == big[10:15]  # one file, opened at 0
    assert "on disk" in repr(large)
    message.close()
    assert list(tmp_path.iterdir()) == [] and large.path is None and small.body == b"s"
    for use in (lambda: large.body, lambda: large.file, lambda: large.save(tmp_path / "late")):
        with pytest.raises(ValueError, match="part 'big'.s content is gone: its temporary file was removed"):
            use()


def test_spooled_part_closed_on_close(tmp_path: Path) -> None:
    """close() closes an open part file and removes the temporary file; closing twice is harmless."""
    message = parse(field("big", b"x" * 100) + END, spool_size=10, temp_dir=str(tmp_path))
    part = message.parts[0]
    stream = part.file
    message.close()
    message.close()
    assert stream.closed and list(tmp_path.iterdir()) == []


def test_total_memory_bound_spools_small_parts(tmp_path: Path) -> None:
    """Once the parts in memory reach max_memory, later parts go to disk even if each is small."""
    body = b"".join(field(f"f{i}", b"y" * 100) for i in range(5)) + END
    message = parse(body, spool_size=150, max_memory=250, temp_dir=str(tmp_path))
    where = [part.path is None for part in message.parts]
    assert where == [True, True, False, False, False]
    assert [part.body for part in message.parts] == [b"y" * 100] * 5
    message.close()


def test_save_moves_or_copies(tmp_path: Path) -> None:
    """save moves a spooled part's file (no copy in memory), copies one already saved, writes one in memory."""
    spool = tmp_path / "spool"
    spool.mkdir()
    body = field("big", b"B" * 5000) + field("small", b"s") + field("other", b"O" * 2000) + END
    message = parse(body, spool_size=1000, temp_dir=str(spool))
    big, small, other = message.parts
    spooled = big.path
    assert big.file.read(1) == b"B"  # an open file does not stop the move
    big.save(tmp_path / "kept.bin")
    assert spooled is not None and not os.path.exists(spooled) and big.path == str(tmp_path / "kept.bin")
    assert big.file.read() == b"B" * 5000  # reopened at the new place, from its start
    big.save(tmp_path / "copy.bin")
    small.save(tmp_path / "small.txt")
    other.save(tmp_path / "other.bin")  # never opened
    message.close()
    assert (tmp_path / "other.bin").read_bytes() == b"O" * 2000
    assert (tmp_path / "kept.bin").read_bytes() == (tmp_path / "copy.bin").read_bytes() == b"B" * 5000
    assert (tmp_path / "small.txt").read_bytes() == b"s" and list(spool.iterdir()) == []


def test_close_after_files_went(tmp_path: Path) -> None:
    """Closing a message whose temporary file someone else removed is not an error."""
    message = parse(field("big", b"z" * 100) + END, spool_size=10, temp_dir=str(tmp_path))
    for left in tmp_path.iterdir():
        left.unlink()
    message.close()


def test_dropped_message_removes_its_files(tmp_path: Path) -> None:
    """A message dropped without close() still removes its temporary files."""
    message = parse(field("big", b"z" * 100) + END, spool_size=10, temp_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1
    del message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        ("", "request body is not multipart: Content-Type is ''"),
        ("text/plain; boundary=XyZ", "request body is not multipart"),
        ("multipart/form-data", "multipart Content-Type has no boundary"),
        ("multipart/form-data; boundary=", "multipart Content-Type has no boundary"),
        ("multipart/form-data; boundary=" + "b" * 71, "is not 1 to 70 printable ASCII characters"),
        ('multipart/form-data; boundary="ab "', "is not 1 to 70 printable ASCII characters"),
        ("multipart/form-data; boundary=a\x01b", "is not 1 to 70 printable ASCII characters"),
        ("multipart/form-data; boundary=a; boundary=b", "parameter 'boundary' given twice"),
    ],
)
def test_bad_content_types(content_type: str, why: str) -> None:
    """A content type that is not multipart, or whose boundary is missing or invalid, is a BadRequest."""
    assert why in bad(lambda: multipart_boundary(content_type))
    assert multipart_boundary("Multipart/Mixed; boundary=" + "b" * 70) == "b" * 70


MALFORMED = [
    (b"", "multipart body is empty"),
    (b"no boundary here\r\n", "multipart body has no boundary line: --XyZ and a CRLF line end"),
    (b"--XyZ\nContent-Disposition: form-data; name=a\n\n1\n--XyZ--\n", "has no boundary line"),  # bare LFs
    (field("a", b"1"), "ends before its closing boundary"),
    (field("a", b"1") + b"--XyZ", "ends before its closing boundary"),
    (field("a", b"1") + b"--XyZ-", "ends before its closing boundary"),
    (field("a", b"1") + b"--XyZ  \r", "ends before its closing boundary"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n", "ends before its closing boundary"),
    (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n" + END, "part 1 has no Content-Disposition header"),
    (b"--XyZ\r\n\r\nx\r\n" + END, "part 1 has no Content-Disposition header"),
    (field("a", b"") + b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n" + END,
     "part 2's Content-Disposition has no name"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\n\r\n" + END,
     "part 1 has 2 Content-Disposition headers"),
    (b"--XyZ\r\nContent-Disposition: form-data;\r\n name=a\r\n\r\n\r\n" + END, "folded header line"),
    (b"--XyZ\r\nContent-Disposition form-data\r\n\r\n\r\n" + END, "malformed header line"),
    (b"--XyZ\r\nBad Name: x\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n" + END, "malformed header line"),
    (b"--XyZ\r\n: x\r\n\r\n\r\n" + END, "malformed header line"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="\xff"\r\n\r\n\r\n' + END, "headers are not valid UTF-8"),
    (b'--XyZ\r\nContent-Disposition: form-data; name="a"; name="b"\r\n\r\n\r\n' + END, "'name' given twice"),
    (b"--XyZ" + b" " * 2000 + b"\r\n", "more than 1024 bytes of padding"),
]


@pytest.mark.parametrize(("body", "why"), MALFORMED)
def test_malformed_bodies(body: bytes, why: str) -> None:
    """Each malformed body is a BadRequest saying what is wrong, whatever the chunking."""
    for chunk in (1, 7, 1 << 16):
        assert why in bad(lambda: parse(body, chunk=chunk))


def test_header_section_bound() -> None:
    """A part's header section may reach max_header_size bytes; past it, a BadRequest, even unterminated."""
    def head(size: int) -> bytes:
        line = b"Content-Disposition: form-data; name=a\r\nX: "
        return b"--XyZ\r\n" + line + b"v" * (size - len(line)) + b"\r\n\r\n"

    assert parse(head(100) + b"\r\n" + END, max_header_size=100).parts[0].name == "a"
    for chunk in (1, 13, 1 << 16):
        assert "part 1's header section is over 100 bytes" in bad(
            lambda: parse(head(101) + b"\r\n" + END, chunk=chunk, max_header_size=100))
    endless = b"--XyZ\r\nContent-Disposition: form-data; name=a\r\nX: " + b"v" * 100_000
    assert "over 16384 bytes" in bad(lambda: parse(endless, chunk=1000))


def test_part_count_bound() -> None:
    """max_parts parts parse; one more is a BadRequest."""
    body = b"".join(field(f"f{i}", b"") for i in range(4)) + END
    assert len(parse(body, max_parts=4).parts) == 4
    assert "more than 3 parts" in bad(lambda: parse(body, max_parts=3))
    many = b"".join(field("f", b"") for _ in range(1001)) + END
    assert "more than 1000 parts" in bad(lambda: parse(many))


def test_failed_parse_removes_spooled_parts(tmp_path: Path) -> None:
    """A body that fails after parts went to disk leaves no temporary file, whether in a part or between them."""
    bodies = [
        field("big", b"x" * 5000) + b"--XyZ\r\n\r\n\r\n" + END,  # fails after a spooled part
        field("big", b"x" * 5000),  # fails in the spooled part itself
    ]
    for body in bodies:
        with pytest.raises(BadRequest):
            parse(body, chunk=700, spool_size=100, temp_dir=str(tmp_path))
        assert list(tmp_path.iterdir()) == []


def test_parser_memory_is_bounded() -> None:
    """Fed a large spooled part in chunks, the parser never buffers more than a chunk and a delimiter."""
    parser = MultipartParser(b"XyZ", MultipartLimits(spool_size=1 << 10))
    parser.feed(b"--XyZ\r\nContent-Disposition: form-data; name=f\r\n\r\n")
    most = 0
    for _ in range(200):
        parser.feed(b"\r\n-" * 3000)  # looks like the start of a delimiter at every turn
        most = max(most, len(parser._buffer), len(parser._content))
    parser.feed(b"\r\n--XyZ--\r\n")
    parts = parser.close()
    assert most <= 9000 + len(b"\r\n--XyZ") and parts[0].size == 200 * 9000
    parser.abort()


# Property tests: bodies built by hand and by the email package, fed in arbitrary chunks.

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\r\n\\'), max_size=10)
contents = st.binary(max_size=300)


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    """``body`` cut at the given offsets (taken modulo its length)."""
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(names, st.one_of(st.none(), names), contents), max_size=6),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    spool=st.integers(min_value=0, max_value=400),
    boundary=st.text("abcXYZ0123'()+_,-./:=?", min_size=1, max_size=70),
)
def test_hand_built_bodies_round_trip(
    parts: list[tuple[str, str | None, bytes]], cuts: list[int], spool: int, boundary: str
) -> None:
    """A hand-built body with any parts, cut anywhere, spooled or not, gives back each part's name, filename, content."""
    delimiter = b"--" + boundary.encode()
    if any(delimiter in content for _, _, content in parts):
        return  # a sender picks a boundary its content does not contain
    body = b"".join(
        delimiter + b"\r\n"
        + f'Content-Disposition: form-data; name="{name}"'.encode()
        + (f'; filename="{filename}"'.encode() if filename is not None else b"")
        + b"\r\n\r\n" + content + b"\r\n"
        for name, filename, content in parts
    ) + delimiter + b"--\r\n"
    with MultipartMessage.parse(split_at(body, cuts), f"multipart/form-data; boundary={boundary}",
                                MultipartLimits(spool_size=spool)) as message:
        assert [(p.name, p.filename, p.body, p.size) for p in message.parts] == [
            (name, filename, content, len(content)) for name, filename, content in parts
        ]
        assert all((p.path is None) == (p.size <= spool) for p in message.parts)


# No control characters: the email package splits header lines at some (str.splitlines' \x1c-\x1e).
printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)
lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.tuples(printable, st.one_of(st.none(), printable), lines), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_email_built_bodies_round_trip(
    parts: list[tuple[str, str | None, list[bytes]]], cuts: list[int]
) -> None:
    """A body the standard library's email package writes (RFC 2231 filenames too), cut anywhere, round-trips."""
    message = MIMEMultipart("form-data")
    for name, filename, content_lines in parts:
        part = MIMEApplication(b"\r\n".join(content_lines), _encoder=encode_noop)
        params = {"name": name} if filename is None else {"name": name, "filename": filename}
        part.add_header("Content-Disposition", "form-data", **params)  # type: ignore[arg-type]
        message.attach(part)
    out = io.BytesIO()
    BytesGenerator(out, policy=email.policy.HTTP).flatten(message)
    body = out.getvalue().split(b"\r\n\r\n", 1)[1]  # the body, after the message's own headers
    with MultipartMessage.parse(split_at(body, cuts), str(message["Content-Type"])) as parsed:
        assert [(p.name, p.filename, p.body, p.content_type) for p in parsed.parts] == [
            (name, filename, b"\r\n".join(content_lines), "application/octet-stream") for name, filename, content_lines in parts
        ]


# The request wrapper, over real twisted.web requests on an in-memory connection.


class Handler(Resource):
    """Calls ``handle(Request.of(request))`` and answers its JSON, or the HTTPError it raised."""

    isLeaf = True

    def __init__(self, handle: Callable[[Request], Any]) -> None:
        super().__init__()
        self.handle = handle

    def render(self, request: Any) -> bytes:
        try:
            result = self.handle(Request.of(request))
        except HTTPError as error:
            request.setResponseCode(error.code)
            return error.response().encoded()[0]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(result).encode()


def in_memory(handle: Callable[[Request], Any], raw: bytes, site: type[Site] = CrowSite) -> bytes:
    """What a site with ``Handler(handle)`` answers to ``raw``, on an in-memory connection."""
    server = site(Handler(handle))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    channel = server.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    answer: bytes = transport.value()
    channel.connectionLost(Failure(ConnectionDone()))
    return answer


def request_bytes(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 request with a Content-Length."""
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_request_line_and_headers() -> None:
    """method, url, raw_url, url_params, headers and the peer's address read the request as Crow's do."""
    seen: dict[str, Any] = {}

    def handle(req: Request) -> Any:
        assert Request.of(req.raw) is req and Request.of(req.raw) is req  # one wrapper per request
        assert req.url_params is req.url_params  # parsed once
        seen.update(
            method=req.method, url=req.url, raw_url=req.raw_url, a=req.url_params.get("a"),
            l=req.url_params.get_list("l"), accept=req.headers["ACCEPT"], all=req.headers.get_all("x-many"),
            none=req.get_header_value("x-none"), first=req.get_header_value("X-Many"), ip=req.remote_ip_address,
            route_params=req.route_params, names="X-Many" in list(req.headers) and len(req.headers) >= 3,
            frag=req.url_params.get("f"),
        )
        return "ok"

    raw = (b"PATCH /p%20q/r?a=%C3%A9&l[]=1&l[]=2&f=x#frag HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n"
           b"X-Many: 1\r\nX-Many: 2\r\nContent-Length: 0\r\n\r\n")
    assert status(in_memory(handle, raw)) == 200
    assert seen == {
        "method": "PATCH", "url": "/p q/r", "raw_url": "/p%20q/r?a=%C3%A9&l[]=1&l[]=2&f=x#frag", "a": "é",
        "l": ["1", "2"], "accept": "*/*", "all": ["1", "2"], "none": "", "first": "1", "ip": "10.1.2.3",
        "route_params": [], "names": True, "frag": "x",  # a '#' ends the query, as in Crow
    }


def test_attributes_delegate_to_raw() -> None:
    """What the wrapper does not define is raw's: read, called and set (request.userdata lands on raw)."""

    def handle(req: Request) -> Any:
        req.userdata = {"user": "ann"}
        assert req.raw.userdata == {"user": "ann"} and req.userdata is req.raw.userdata
        req.setHeader(b"x-set", b"by raw")
        req.raw.route_params = [1, "two"]
        req.max_params = 2  # the wrapper's own: on the wrapper, for this request
        assert "max_params" not in vars(req.raw)
        assert "too many" not in repr(req) and req.route_params == [1, "two"]
        with pytest.raises(AttributeError):
            req.url = "/elsewhere"  # type: ignore[misc]
        with pytest.raises(BadRequest, match="at most 2"):
            req.url_params
        return {"args": sorted(k.decode() for k in req.args)}

    answer = in_memory(handle, request_bytes("GET", "/?a=1&b=2&c=3"))  # a failed assertion above would be a 500
    assert status(answer) == 200 and answer.endswith(b'{"args": ["a", "b", "c"]}')
    assert b"x-set: by raw" in answer.lower()


def test_wrapper_without_raw() -> None:
    """A wrapper being copied, before raw is set, does not recurse looking for it."""
    blank = Request.__new__(Request)
    with pytest.raises(AttributeError):
        blank.raw


def test_json_bodies() -> None:
    """json() parses a UTF-8 JSON body; empty, bad UTF-8, bad JSON, NaN, deep nesting and huge ints are 400s."""

    def handle(req: Request) -> Any:
        return {"got": req.json(), "again": req.json(), "body": req.body is req.body}

    answer = in_memory(handle, request_bytes("POST", "/", '{"a": [1, "é"]}'.encode()))
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"got": {"a": [1, "é"]}, "again": {"a": [1, "é"]}, "body": True}
    cases = {
        b"": b"the body is empty",
        b'"\xff"': b"codec can't decode",
        b"{": b"Expecting property name",
        b"[NaN]": b"NaN is not JSON",
        b"[" * 100_000: b"nested too deeply",
        b"1" * 5000: b"an integer of 5000 digits is more than 4000",
        b"\xef\xbb\xbf{}": b"Unexpected UTF-8 BOM",
    }
    for body, why in cases.items():
        answer = in_memory(handle, request_bytes("POST", "/", body))
        assert status(answer) == 400 and b"400 request body is not valid JSON: " in answer and why in answer


def test_form_bodies() -> None:
    """get_body_params() reads an x-www-form-urlencoded body, and refuses other content types with a 400."""

    def handle(req: Request) -> Any:
        return req.get_body_params().items()

    form = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    answer = in_memory(handle, request_bytes("POST", "/", b"a=1&b=x+y&c=%E2%82%AC", form))
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == [["a", "1"], ["b", "x y"], ["c", "€"]]
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": FORM}):
        answer = in_memory(handle, request_bytes("POST", "/", b"a=1", headers))
        assert status(answer) == 400 and b"request body is not a form" in answer
    too_many = in_memory(handle, request_bytes("POST", "/", b"&".join([b"k"] * 257), form))
    assert status(too_many) == 400 and b"form body has 257 parameters; at most 256 are taken" in too_many


def test_crow_site_leaves_post_bodies_out_of_args() -> None:
    """CrowSite parses no POST body into request.args (twisted.web's Site does, a multipart one whole in memory)."""
    body = field("f", b"value") + END

    def handle(req: Request) -> Any:
        parts = req.multipart().parts
        return {"args": {k.decode(): [v.decode() for v in vs] for k, vs in req.args.items()},
                "parts": [(p.name, p.body.decode()) for p in parts], "same": req.multipart() is req.multipart()}

    raw = request_bytes("POST", "/?q=1", body, {"Content-Type": FORM})
    ours = json.loads(in_memory(handle, raw).split(b"\r\n\r\n", 1)[1])
    theirs = json.loads(in_memory(handle, raw, Site).split(b"\r\n\r\n", 1)[1])
    assert ours == {"args": {"q": ["1"]}, "parts": [["f", "value"]], "same": True}
    assert theirs == {"args": {"q": ["1"], "f": ["value"]}, "parts": [["f", "value"]], "same": True}

    def args(req: Request) -> Any:
        return {k.decode(): [v.decode() for v in vs] for k, vs in req.args.items()}

    form = request_bytes("POST", "/?q=2", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"})
    assert json.loads(in_memory(args, form).split(b"\r\n\r\n", 1)[1]) == {"q": ["2"]}


def test_malformed_multipart_is_400() -> None:
    """A malformed multipart body, or one that is not multipart at all, answers 400 with the reason."""

    def handle(req: Request) -> Any:
        return len(req.multipart().parts)

    truncated = in_memory(handle, request_bytes("POST", "/", field("a", b"1"), {"Content-Type": FORM}))
    assert status(truncated) == 400 and b"ends before its closing boundary" in truncated
    plain = in_memory(handle, request_bytes("POST", "/", b"x", {"Content-Type": "text/plain"}))
    assert status(plain) == 400 and b"request body is not multipart" in plain


def test_body_after_finish_is_an_error() -> None:
    """Reading the body after twisted.web dropped it (the request finished) is a RuntimeError, not b''."""
    kept: list[Request] = []

    def handle(req: Request) -> Any:
        kept.append(req)
        return "ok"

    in_memory(handle, request_bytes("POST", "/", b"data"))
    with pytest.raises(RuntimeError, match="the request's body is gone"):
        kept[0].body


def test_multipart_files_go_when_the_request_finishes(tmp_path: Path) -> None:
    """Spooled parts' temporary files are removed when the request finishes, and when its connection is lost."""
    kept: list[MultipartMessage] = []

    def handle(req: Request) -> Any:
        message = req.multipart(MultipartLimits(spool_size=10, temp_dir=str(tmp_path)))
        kept.append(message)
        assert message.parts[0].path is not None and os.path.exists(message.parts[0].path)
        return message.parts[0].size

    raw = request_bytes("POST", "/", field("f", b"x" * 1000) + END, {"Content-Type": FORM})
    assert status(in_memory(handle, raw)) == 200 and list(tmp_path.iterdir()) == []

    class Later(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            Request.of(request).multipart(MultipartLimits(spool_size=10, temp_dir=str(tmp_path)))
            return NOT_DONE_YET  # the client goes away before an answer

    transport = StringTransport()
    channel = CrowSite(Later()).buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    assert len(list(tmp_path.iterdir())) == 1
    channel.connectionLost(Failure(ConnectionDone()))
    assert list(tmp_path.iterdir()) == []


# End to end, over 127.0.0.1: twisted's Agent and http.client against CrowSite.


class Echo(Resource):
    """Answers JSON of what ``Request.of(request)`` parsed, by path; keeps the uploads' messages."""

    isLeaf = True

    def __init__(self, temp_dir: str) -> None:
        super().__init__()
        self.temp_dir = temp_dir
        self.peaks: list[int] = []
        """tracemalloc's peak during each multipart() parse."""
        self.receive_peaks: list[int] = []
        """tracemalloc's peak from the test's start to the handler: the client sending, twisted.web receiving."""

    def render(self, request: Any) -> bytes:
        req = Request.of(request)
        try:
            result = self.answer(req)
        except HTTPError as error:
            request.setResponseCode(error.code)
            return error.response().encoded()[0]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(result).encode()

    def answer(self, req: Request) -> Any:
        if req.url == "/query":
            return {"items": req.url_params.items(), "list": req.url_params.get_list("l"),
                    "dict": req.url_params.get_dict("d"), "ip": req.remote_ip_address, "method": req.method}
        if req.url == "/json":
            return {"json": req.json()}
        if req.url == "/form":
            return {"form": req.get_body_params().items()}
        # /upload: parse with tracemalloc's peak reset, so the peak is the parse's own
        if tracemalloc.is_tracing():
            self.receive_peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.reset_peak()
        message = req.multipart(MultipartLimits(temp_dir=self.temp_dir))
        if tracemalloc.is_tracing():
            self.peaks.append(tracemalloc.get_traced_memory()[1])
        parts = []
        for part in message.parts:
            digest = hashlib.sha256()
            stream = part.file
            while chunk := stream.read(1 << 16):
                digest.update(chunk)
            parts.append({"name": part.name, "filename": part.filename, "size": part.size,
                          "on_disk": part.path is not None and os.path.isfile(part.path), "path": part.path,
                          "sha256": digest.hexdigest(), "content_type": part.content_type})
        return {"parts": parts}


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[str, Echo, Path]]:
    """An Echo on CrowSite on a random 127.0.0.1 port: (base URL, resource, its temp dir)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    resource = Echo(str(spool))
    port = reactor.listenTCP(0, CrowSite(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield f"http://127.0.0.1:{port.getHost().port}", resource, spool
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.inlineCallbacks
def test_agent_json_form_and_query(echo: tuple[str, Echo, Path]) -> Iterator[Any]:
    """Twisted's Agent gets query params, a JSON body and a form body parsed, and a 400 for bad JSON."""
    base, _, _ = echo
    agent = Agent(reactor)

    def send(method: bytes, path: str, body: bytes | None = None, ctype: str | None = None) -> Any:
        headers = TwistedHeaders({b"content-type": [ctype.encode()]}) if ctype else None
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        return within(agent.request(method, f"{base}{path}".encode(), headers, producer))

    response = yield send(b"GET", "/query?a=1&a=2&l[]=x&l[]=y&d[k]=v&s=a+b%21")
    answer = json.loads((yield within(readBody(response))))
    assert answer == {"items": [["a", "1"], ["a", "2"], ["l[]", "x"], ["l[]", "y"], ["d[k]", "v"], ["s", "a b!"]],
                      "list": ["x", "y"], "dict": {"k": "v"}, "ip": "127.0.0.1", "method": "GET"}
    response = yield send(b"POST", "/json", json.dumps({"k": ["v", 1, None]}).encode(), "application/json")
    assert json.loads((yield within(readBody(response)))) == {"json": {"k": ["v", 1, None]}}
    response = yield send(b"PUT", "/form", b"x=1&y=%20two", "application/x-www-form-urlencoded")
    assert json.loads((yield within(readBody(response)))) == {"form": [["x", "1"], ["y", " two"]]}
    response = yield send(b"POST", "/json", b"{nope", "application/json")
    body = yield within(readBody(response))
    assert response.code == 400 and body.startswith(b"400 request body is not valid JSON: Expecting property name")


def upload_file(path: Path, size: int) -> tuple[str, str]:
    """Write a multipart body with a ``size``-byte file part to ``path``; its boundary and the file's sha256."""
    boundary = "crowtwist-test-boundary-7f3a"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n".encode())
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="big.bin"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        block = os.urandom(1 << 20)
        for i in range(size >> 20):
            piece = block[i:] + block[:i]  # not the same MiB each time
            digest.update(piece)
            out.write(piece)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return boundary, digest.hexdigest()


@pytest_twisted.inlineCallbacks
def test_agent_large_upload_streams_to_disk(echo: tuple[str, Echo, Path], tmp_path: Path) -> Iterator[Any]:
    """A 20 MiB upload through Agent ends in a temporary file, parsed in bounded memory, removed after the answer."""
    base, resource, spool = echo
    size = 20 << 20
    boundary, digest = upload_file(tmp_path / "body", size)
    agent = Agent(reactor)
    headers = TwistedHeaders({b"content-type": [f"multipart/form-data; boundary={boundary}".encode()]})
    tracemalloc.start()
    try:
        with open(tmp_path / "body", "rb") as stream:
            response = yield within(agent.request(b"POST", f"{base}/upload".encode(), headers, FileBodyProducer(stream)), 60)
            answer = json.loads((yield within(readBody(response), 60)))
        answer_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    note, upload = answer["parts"]
    assert (note["name"], note["size"], note["on_disk"]) == ("note", 2, False)
    assert (upload["name"], upload["filename"], upload["size"], upload["sha256"]) == ("upload", "big.bin", size, digest)
    assert upload["on_disk"] and Path(upload["path"]).parent == spool
    assert list(spool.iterdir()) == []  # removed when the request finished
    # Peaks while sending and receiving (client included), parsing, answering: each far below the 20 MiB.
    peaks = (resource.receive_peaks[0], resource.peaks[0], answer_peak)
    print(f"tracemalloc peaks: receive {peaks[0]}, parse {peaks[1]}, answer {peaks[2]} bytes")
    assert peaks[0] < 2 << 20 and peaks[1] < 2 << 20 and peaks[2] < 2 << 20, peaks


@pytest_twisted.inlineCallbacks
def test_http_client_query_upload_and_malformed(echo: tuple[str, Echo, Path]) -> Iterator[Any]:
    """The standard library's http.client gets query params and a small upload parsed, and a malformed one a 400."""
    base, _, spool = echo
    host, port = base.removeprefix("http://").split(":")

    def client() -> list[tuple[int, bytes]]:
        assert threading.current_thread() is not threading.main_thread()
        answers = []
        connection = HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", "/query?l[]=%E2%82%AC&d[a]=1&d[b]=2")
            answers.append(connection.getresponse())
            answers[-1] = (answers[-1].status, answers[-1].read())  # type: ignore[call-overload]
            good = field("f", b"data", "x.txt") + END
            connection.request("POST", "/upload", good, {"Content-Type": FORM})
            reply = connection.getresponse()
            answers.append((reply.status, reply.read()))  # type: ignore[arg-type]
            truncated = field("f", b"x" * 100_000, "x.txt")  # no closing boundary
            connection.request("POST", "/upload", truncated, {"Content-Type": FORM})
            reply = connection.getresponse()
            answers.append((reply.status, reply.read()))  # type: ignore[arg-type]
            connection.request("POST", "/upload", b"x", {"Content-Type": "multipart/form-data"})
            reply = connection.getresponse()
            answers.append((reply.status, reply.read()))  # type: ignore[arg-type]
        finally:
            connection.close()
        return answers  # type: ignore[return-value]

    (query, upload, truncated, no_boundary) = yield within(deferToThread(client))
    assert query[0] == 200 and json.loads(query[1])["list"] == ["€"] and json.loads(query[1])["dict"] == {"a": "1", "b": "2"}
    assert upload[0] == 200 and json.loads(upload[1])["parts"][0]["sha256"] == hashlib.sha256(b"data").hexdigest()
    assert truncated == (400, b"400 multipart body ends before its closing boundary (--boundary--): truncated?\n")
    assert no_boundary == (400, b"400 multipart Content-Type has no boundary\n")
    assert list(spool.iterdir()) == []


def test_request_over_a_bare_object(tmp_path: Path) -> None:
    """Over a request-like object without notifyFinish (a test double), the wrapper works and files still go."""
    body = field("f", b"x" * 100) + END
    raw = SimpleNamespace(
        method=b"POST", uri=b"/up?x=1", content=io.BytesIO(body), getClientAddress=lambda: None,
        requestHeaders=TwistedHeaders({b"content-type": [FORM.encode()]}),
    )
    req = Request.of(raw)
    message = req.multipart(MultipartLimits(spool_size=10, temp_dir=str(tmp_path)))
    assert message.parts[0].size == 100 and req.body == body and raw.content.tell() == 0
    assert (req.remote_ip_address, req.headers.get("€"), req.get_header_value("€")) == ("", None, "")
    del req, message, raw
    gc.collect()  # the wrapper and raw refer to each other
    assert list(tmp_path.iterdir()) == []


def test_part_defaults() -> None:
    """A Part made by hand holds its body in memory; an empty one reads as empty."""
    part = Part("n", None, None, b"abc")
    assert (part.size, part.path, part.file.read(), part.content_type) == (3, None, b"abc", "text/plain")
    part.close()
    part.close()
