"""The sans-I/O frame layer: RFC 6455's framing rules, byte for byte, whatever the read boundaries."""

from __future__ import annotations

import codecs
import os
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.streams import StreamReader

from crowtwist.websocket import _frames, _masking
from crowtwist.websocket._close import CloseCode
from crowtwist.websocket._messages import MessageAssembler
from crowtwist.websocket._encoding import encode_frame, frame_header
from crowtwist.websocket._frames import (
    Frame,
    FrameParser,
    Opcode,
    ProtocolError,
    unmask,
)


def parse_all(data: bytes, **options: object) -> list[Frame]:
    """Every frame in ``data`` fed in one piece, which must hold whole frames only."""
    parser = FrameParser(**options)  # type: ignore[arg-type]
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    assert parser.buffered == 0 and parser.consumed == len(data)
    return frames


def reference_xor(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# RFC 6455 section 5.7, byte for byte.

HELLO = b"Hello"
KEY = bytes((0x37, 0xFA, 0x21, 0x3D))
RFC_EXAMPLES = [
    ("unmasked text", bytes((0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F)), [Frame(Opcode.TEXT, HELLO)], None),
    (
        "masked text",
        bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58)),
        [Frame(Opcode.TEXT, HELLO)],
        KEY,
    ),
    (
        "fragmented text",
        bytes((0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F)),
        [Frame(Opcode.TEXT, b"Hel", fin=False), Frame(Opcode.CONTINUATION, b"lo")],
        None,
    ),
    ("unmasked ping", bytes((0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F)), [Frame(Opcode.PING, HELLO)], None),
    (
        "masked pong",
        bytes((0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58)),
        [Frame(Opcode.PONG, HELLO)],
        KEY,
    ),
]
PAYLOAD_256 = bytes(range(256))
PAYLOAD_65536 = os.urandom(65536)


@pytest.mark.parametrize(("name", "wire", "frames", "key"), RFC_EXAMPLES, ids=[e[0] for e in RFC_EXAMPLES])
def test_rfc_examples_parse(name: str, wire: bytes, frames: list[Frame], key: bytes | None) -> None:
    """RFC 6455 5.7's example frames parse to their opcodes and payloads."""
    assert parse_all(wire, require_mask=False) == frames


@pytest.mark.parametrize(("name", "wire", "frames", "key"), RFC_EXAMPLES, ids=[e[0] for e in RFC_EXAMPLES])
def test_rfc_examples_encode(name: str, wire: bytes, frames: list[Frame], key: bytes | None) -> None:
    """Encoding RFC 6455 5.7's example frames (with the example's mask key) gives its bytes exactly."""
    encoded = b"".join(encode_frame(f.opcode, f.payload, fin=f.fin, mask=key) for f in frames)
    assert encoded == wire


def test_rfc_example_fragments_assemble() -> None:
    """RFC 6455 5.7's fragmented "Hel" + "lo" is the text message "Hello"."""
    assembler = MessageAssembler()
    first, last = RFC_EXAMPLES[2][2]
    assert assembler.add(first) is None and assembler.in_message
    assert assembler.add(last) == ("Hello", False) and not assembler.in_message


@pytest.mark.parametrize(
    ("payload", "header"),
    [(PAYLOAD_256, bytes((0x82, 0x7E, 0x01, 0x00))), (PAYLOAD_65536, bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0)))],
    ids=["256", "65536"],
)
def test_rfc_example_lengths(payload: bytes, header: bytes) -> None:
    """RFC 6455 5.7's 256-byte and 64 KiB binary frames have its 16- and 64-bit length headers, both ways."""
    assert frame_header(Opcode.BINARY, len(payload)) == header
    assert encode_frame(Opcode.BINARY, payload) == header + payload
    assert parse_all(header + payload, require_mask=False) == [Frame(Opcode.BINARY, payload)]


def test_frame_header_with_mask_then_masked_payload() -> None:
    """A header with a mask key, then the payload masked by ``unmask``, is ``encode_frame``'s frame."""
    payload = os.urandom(300)
    header = frame_header(Opcode.TEXT, len(payload), fin=False, rsv=4, mask=KEY)
    assert header == bytes((0x41, 0xFE, 0x01, 0x2C)) + KEY
    assert header + unmask(payload, 0, len(payload), KEY) == encode_frame(
        Opcode.TEXT, payload, fin=False, rsv=4, mask=KEY
    )


@pytest.mark.parametrize(
    ("opcode", "length", "options"),
    [
        (3, 0, {}),
        (11, 0, {}),
        (Opcode.PING, 126, {}),
        (Opcode.PING, 1, {"fin": False}),
        (Opcode.TEXT, 1, {"rsv": 8}),
        (Opcode.TEXT, 1, {"mask": b"abc"}),
        (Opcode.TEXT, 1 << 63, {}),
        (Opcode.TEXT, -1, {}),
    ],
)
def test_frame_header_refuses_invalid_frames(opcode: int, length: int, options: dict[str, object]) -> None:
    """No header is made for a frame no peer may be sent (reserved opcode, bad control frame, bad mask or length)."""
    with pytest.raises(ValueError):
        frame_header(opcode, length, **options)  # type: ignore[arg-type]


# Errors, raised as soon as the header shows them.


def header(first: int, length: int, *, masked: bool = True, encoding: int | None = None) -> bytes:
    """A frame's header up to its length, without its mask key: what shows every header error."""
    mask_bit = 0x80 if masked else 0
    encoding = encoding or (0 if length < 126 else 126 if length < 65536 else 127)
    if encoding == 126:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    if encoding == 127:
        return struct.pack("!BBQ", first, mask_bit | 127, length)
    return bytes((first, mask_bit | length))


PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
HEADER_ERRORS: list[tuple[str, bytes, dict[str, object], CloseCode, str]] = [
    *[
        (f"reserved opcode {op}", header(0x80 | op, 0), {}, PROTOCOL_ERROR, "reserved opcode")
        for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
    ],
    *[(f"rsv {rsv}", header(0x81 | rsv << 4, 0), {}, PROTOCOL_ERROR, "RSV") for rsv in range(1, 8)],
    ("rsv not allowed", header(0xA1, 0), {"allowed_rsv": 4}, PROTOCOL_ERROR, "RSV"),
    ("rsv on a control frame", header(0xC9, 0), {"allowed_rsv": 4}, PROTOCOL_ERROR, "RSV"),
    ("fragmented ping", header(0x09, 0), {}, PROTOCOL_ERROR, "fragmented control frame"),
    ("fragmented close", header(0x08, 0), {}, PROTOCOL_ERROR, "fragmented control frame"),
    ("ping of 126", header(0x89, 126)[:2], {}, PROTOCOL_ERROR, "control frame"),
    ("close of 65536", header(0x88, 65536)[:2], {}, PROTOCOL_ERROR, "control frame"),
    ("unmasked", header(0x81, 5, masked=False), {}, PROTOCOL_ERROR, "Client connection not masked."),
    ("unmasked, long", header(0x82, 70000, masked=False)[:2], {}, PROTOCOL_ERROR, "Client connection not masked."),
    ("64-bit top bit", header(0x82, 1 << 63), {}, PROTOCOL_ERROR, "2^63"),
    ("64-bit top bit, lenient", header(0x82, (1 << 64) - 1), {"require_mask": False}, PROTOCOL_ERROR, "2^63"),
    ("16-bit for 0", header(0x81, 0, encoding=126), {}, PROTOCOL_ERROR, "minimal"),
    ("16-bit for 125", header(0x81, 125, encoding=126), {}, PROTOCOL_ERROR, "minimal"),
    ("64-bit for 125", header(0x81, 125, encoding=127), {}, PROTOCOL_ERROR, "minimal"),
    ("64-bit for 65535", header(0x82, 65535, encoding=127), {}, PROTOCOL_ERROR, "minimal"),
    ("too big, 7-bit", header(0x81, 11), {"max_size": 10}, CloseCode.MESSAGE_TOO_BIG, "limit of 10"),
    ("too big, 16-bit", header(0x82, 65535), {"max_size": 1000}, CloseCode.MESSAGE_TOO_BIG, "limit"),
    ("too big, 64-bit", header(0x82, 1 << 40), {"max_size": 1 << 20}, CloseCode.MESSAGE_TOO_BIG, "limit"),
    ("too big continuation", header(0x00, 101), {"max_size": 100}, CloseCode.MESSAGE_TOO_BIG, "limit"),
    ("largest too big", header(0x82, (1 << 63) - 1), {"max_size": 1 << 62}, CloseCode.MESSAGE_TOO_BIG, "limit"),
]


@pytest.mark.parametrize(("name", "head", "options", "code", "text"), HEADER_ERRORS, ids=[e[0] for e in HEADER_ERRORS])
def test_header_errors(name: str, head: bytes, options: dict[str, object], code: CloseCode, text: str) -> None:
    """Each framing error is raised with its close code once its header is in, before any payload (or mask key)."""
    parser = FrameParser(**options)  # type: ignore[arg-type]
    parser.feed(head[:-1])
    assert parser.next_frame() is None  # one byte short: not yet known
    parser.feed(head[-1:])
    with pytest.raises(ProtocolError) as info:
        parser.next_frame()
    assert info.value.code == code
    assert text in info.value.message
    assert len(info.value.message.encode()) <= 123


@pytest.mark.parametrize(("name", "head", "options", "code", "text"), HEADER_ERRORS, ids=[e[0] for e in HEADER_ERRORS])
def test_header_errors_after_whole_frames(
    name: str, head: bytes, options: dict[str, object], code: CloseCode, text: str
) -> None:
    """A bad header after good frames in the same read fails only after they came out, and a byte at a time too."""
    good = encode_frame(Opcode.BINARY, b"ok", mask=KEY)
    wire = good * 2 + head
    for step in (len(wire), 1):
        parser = FrameParser(**options)  # type: ignore[arg-type]
        frames = []
        with pytest.raises(ProtocolError) as info:
            for i in range(0, len(wire), step):
                parser.feed(wire[i : i + step])
                while (frame := parser.next_frame()) is not None:
                    frames.append(frame)
        assert frames == [Frame(Opcode.BINARY, b"ok")] * 2
        assert parser.consumed == 2 * len(good)
        assert info.value.code == code


def test_lenient_mode_accepts_masked_and_unmasked() -> None:
    """With ``require_mask=False`` (Crow's lenient default) masked and unmasked frames are both accepted."""
    wire = encode_frame(Opcode.TEXT, b"a") + encode_frame(Opcode.TEXT, b"b", mask=KEY)
    assert parse_all(wire, require_mask=False) == [Frame(Opcode.TEXT, b"a"), Frame(Opcode.TEXT, b"b")]


def test_allowed_rsv_bits_come_through() -> None:
    """RSV bits an extension negotiated are accepted on data frames and reported in ``rsv``."""
    wire = encode_frame(Opcode.TEXT, b"z", rsv=4, mask=KEY, fin=False) + encode_frame(0, b"y", mask=KEY)
    assert parse_all(wire, allowed_rsv=4) == [Frame(Opcode.TEXT, b"z", False, 4), Frame(0, b"y")]


def test_max_size_bounds_data_frames_only() -> None:
    """A data frame of exactly ``max_size`` passes; control frames are bounded by 125 bytes, not by ``max_size``."""
    wire = encode_frame(Opcode.BINARY, b"x" * 10, mask=KEY) + encode_frame(Opcode.PING, b"p" * 125, mask=KEY)
    assert parse_all(wire, max_size=10) == [Frame(Opcode.BINARY, b"x" * 10), Frame(Opcode.PING, b"p" * 125)]


def test_unknown_parser_options_are_refused() -> None:
    """``allowed_rsv`` is three bits."""
    with pytest.raises(ValueError):
        FrameParser(allowed_rsv=8)


# Random valid frames, split anywhere.

ALL_OPCODES = [int(op) for op in Opcode]
INTERESTING_LENGTHS = [0, 1, 2, 3, 4, 5, 124, 125, 126, 127, 65535, 65536, 65537]


@st.composite
def frames(draw: st.DrawFn, *, masked: bool | None = None, rsv: bool = True) -> tuple[Frame, bytes | None]:
    """A valid frame (control frames whole, at most 125 bytes, no RSV) and its mask key, or ``None``."""
    opcode = draw(st.sampled_from(ALL_OPCODES))
    control = opcode > 7
    if control:
        length = draw(st.sampled_from([0, 1, 2, 124, 125]) | st.integers(0, 125))
    else:
        length = draw(st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 300))
    head = draw(st.binary(max_size=min(length, 16)))
    fill = draw(st.integers(0, 255))
    payload = (head + bytes((fill,)) * length)[:length]
    fin = True if control else draw(st.booleans())
    bits = 0 if control or not rsv else draw(st.integers(0, 7))
    if masked is None:
        key = draw(st.none() | st.binary(min_size=4, max_size=4))
    else:
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
    return Frame(opcode, payload, fin, bits), key


def splits(draw: Callable[..., Any], size: int) -> list[int]:
    cuts = draw(st.lists(st.integers(0, size), max_size=12))
    # Some runs feed tiny pieces, as a slow sender would.
    if draw(st.booleans()) and size < 4096:
        cuts += list(range(0, size, draw(st.integers(1, 7))))
    return sorted(set(cuts) | {0, size})


def feed_in_pieces(
    parser: FrameParser, wire: bytes, cuts: Sequence[int], ends: Sequence[int]
) -> Iterator[tuple[int, Frame | None]]:
    """Feed ``wire`` cut at ``cuts``; yield (bytes fed so far, each ``next_frame`` result), checking ``needed``."""
    fed = 0
    returned = 0
    for start, stop in zip(cuts, cuts[1:]):
        parser.feed(wire[start:stop])
        fed = stop
        while True:
            frame = parser.next_frame()
            yield fed, frame
            if frame is None:
                break
            returned += 1
        # Never more than what is really missing of the next frame.
        missing = ends[returned] - fed if returned < len(ends) else 2
        assert 1 <= parser.needed <= max(missing, 1)
        assert parser.buffered == fed - (ends[returned - 1] if returned else 0)
        assert parser.consumed == (ends[returned - 1] if returned else 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_frames_split_anywhere(data: st.DataObject) -> None:
    """Random valid frames, encoded, concatenated and fed in random pieces, come out the same, all consumed."""
    lenient = data.draw(st.booleans())
    sent = data.draw(st.lists(frames(masked=None if lenient else True), min_size=1, max_size=8))
    encoded = [encode_frame(f.opcode, f.payload, fin=f.fin, rsv=f.rsv, mask=key) for f, key in sent]
    wire = b"".join(encoded)
    ends = [sum(len(e) for e in encoded[: i + 1]) for i in range(len(encoded))]
    parser = FrameParser(require_mask=not lenient, allowed_rsv=7)
    got = [frame for _, frame in feed_in_pieces(parser, wire, splits(data.draw, len(wire)), ends) if frame]
    assert got == [f for f, _ in sent]
    assert all(type(f.payload) is bytes for f in got)
    assert parser.consumed == len(wire)
    assert parser.buffered == 0
    assert parser.take_buffered() == b""


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=6))
def test_feeding_what_is_needed_makes_progress(sent: list[tuple[Frame, bytes | None]]) -> None:
    """Feeding exactly ``needed`` more bytes always yields a frame or learns more of one (at most 4 steps a frame)."""
    wire = b"".join(encode_frame(f.opcode, f.payload, fin=f.fin, rsv=f.rsv, mask=key) for f, key in sent)
    parser = FrameParser(require_mask=False, allowed_rsv=7)
    got: list[Frame] = []
    offset = 0
    steps = 0
    while offset < len(wire):
        frame = parser.next_frame()
        if frame is not None:
            got.append(frame)
            steps = 0
            continue
        need = parser.needed
        assert need >= 1
        before = parser._need_end
        parser.feed(wire[offset : offset + need])
        offset += need
        steps += 1
        assert steps <= 4
        frame = parser.next_frame()
        if frame is not None:
            got.append(frame)
            steps = 0
        else:
            assert parser._need_end > before  # progress: it now knows it needs more than before
    while (frame := parser.next_frame()) is not None:
        got.append(frame)
    assert got == [f for f, _ in sent]


@pytest.mark.parametrize("unmasking", ["C", "python", "big-integer"])
def test_large_frame_in_small_pieces(unmasking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a large frame's header is in, ``needed`` is exactly its rest: a caller skips each piece until it is whole."""
    if unmasking == "C" and _masking._unmask_c is None:
        pytest.skip("the C helper is not built")
    if unmasking != "C":
        monkeypatch.setattr(_frames, "unmask", _masking._unmask_python)
    if unmasking == "big-integer":
        monkeypatch.setattr(_masking, "_native_masker", None)
    payload = os.urandom(1 << 20)
    follow = encode_frame(Opcode.TEXT, b"after", mask=KEY)
    wire = encode_frame(Opcode.BINARY, payload, mask=KEY) + follow
    parser = FrameParser()
    calls = 0
    got = []
    for i in range(0, len(wire), 4096):
        parser.feed(wire[i : i + 4096])
        if parser.needed:
            if i >= 4096:
                assert parser.needed == len(wire) - len(follow) - i - 4096
            continue
        calls += 1
        while (frame := parser.next_frame()) is not None:
            got.append(frame)
    assert got == [Frame(Opcode.BINARY, payload), Frame(Opcode.TEXT, b"after")]
    assert calls <= 2


def test_held_frame_joins_only_its_own_bytes() -> None:
    """A frame completed by a large read is joined alone: the frames after it are parsed from that read in place."""
    small = encode_frame(Opcode.TEXT, b"s", mask=KEY)
    big = encode_frame(Opcode.BINARY, b"b" * 1000, mask=KEY)
    parser = FrameParser()
    parser.feed(big[:500])
    assert parser.next_frame() is None
    rest = big[500:] + small * 1000
    parser.feed(rest)
    assert parser.next_frame() == Frame(Opcode.BINARY, b"b" * 1000)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"s")
    assert parser._data is rest  # the read itself, not a copy of what remained of it
    assert parser.buffered == 999 * len(small)


def test_take_buffered_hands_over_the_rest() -> None:
    """``take_buffered`` returns every byte fed and not consumed, across reads, and the parser starts afresh."""
    first = encode_frame(Opcode.TEXT, b"one", mask=KEY)
    second = encode_frame(Opcode.TEXT, b"two" * 100, mask=KEY)
    parser = FrameParser()
    parser.feed(first + second[:50])
    assert parser.next_frame() == Frame(Opcode.TEXT, b"one")
    assert parser.next_frame() is None
    parser.feed(second[50:60])
    parser.feed(second[60:])
    assert parser.take_buffered() == second
    assert (parser.consumed, parser.buffered, parser.needed) == (len(first), 0, 0)
    assert parser.next_frame() is None
    parser.feed(first)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"one")
    assert parser.consumed == 2 * len(first)


def test_feed_accepts_other_buffers() -> None:
    """A bytearray or memoryview fed is copied, so frames still carry ``bytes`` payloads."""
    wire = bytearray(encode_frame(Opcode.BINARY, b"abc"))
    parser = FrameParser(require_mask=False)
    parser.feed(memoryview(wire)[:3])
    parser.feed(wire[3:])
    frame = parser.next_frame()
    assert frame == Frame(Opcode.BINARY, b"abc") and type(frame.payload) is bytes


# Cross-checks with websockets' own codec.


def websockets_parse(wire: bytes, *, mask: bool) -> list[WsFrame]:
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    parsed = []
    while reader.buffer:
        parser = WsFrame.parse(reader.read_exact, mask=mask)
        try:
            next(parser)
        except StopIteration as done:
            parsed.append(done.value)
        else:
            raise AssertionError("websockets wanted more bytes")
    return parsed


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(rsv=False), min_size=1, max_size=6), st.booleans())
def test_websockets_parses_our_frames(sent: list[tuple[Frame, bytes | None]], masked: bool) -> None:
    """websockets' parser reads our encoding of random valid frames as the same frames."""
    wire = b"".join(
        encode_frame(f.opcode, f.payload, fin=f.fin, mask=(key or KEY) if masked else None) for f, key in sent
    )
    theirs = websockets_parse(wire, mask=masked)
    assert [(int(w.opcode), bytes(w.data), w.fin) for w in theirs] == [(f.opcode, f.payload, f.fin) for f, _ in sent]


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(rsv=False), min_size=1, max_size=6), st.booleans())
def test_we_parse_websockets_frames(sent: list[tuple[Frame, bytes | None]], masked: bool) -> None:
    """Our parser reads websockets' serialization of random valid frames as the same frames."""
    wire = b"".join(WsFrame(WsOpcode(f.opcode), f.payload, f.fin).serialize(mask=masked) for f, _ in sent)
    assert parse_all(wire, require_mask=masked) == [f for f, _ in sent]


# Messages.


@st.composite
def messages(draw: st.DrawFn) -> tuple[str | bytes, bool]:
    binary = draw(st.booleans())
    if binary:
        return draw(st.binary(max_size=300)), True
    return draw(st.text(max_size=100)), False


def fragment(draw: Callable[..., Any], data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))) | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:])] or [b""]
    if draw(st.booleans()):
        pieces.insert(draw(st.integers(0, len(pieces))), b"")  # empty fragments are allowed anywhere
    return pieces


def as_frames(pieces: list[bytes], binary: bool) -> list[Frame]:
    first = Opcode.BINARY if binary else Opcode.TEXT
    return [
        Frame(first if i == 0 else Opcode.CONTINUATION, piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)
    ]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_fragmentations_reassemble(data: st.DataObject) -> None:
    """Random messages in random fragments come back whole, text as ``str`` and binary as ``bytes``."""
    sent = data.draw(st.lists(messages(), min_size=1, max_size=5))
    assembler = MessageAssembler(max_size=1000)
    got = []
    for message, binary in sent:
        raw = message if isinstance(message, bytes) else message.encode()
        for frame in as_frames(fragment(data.draw, raw), binary):
            result = assembler.add(frame)
            assert assembler.in_message == (result is None)
            if result is not None:
                got.append(result)
    assert got == sent
    assert all(type(m) is (bytes if b else str) for m, b in got)


# Table 3-7 of the Unicode standard: each lead byte's allowed second bytes, and the sequence's length.
_SECOND = {
    **{lead: (0x80, 0xBF, 2) for lead in range(0xC2, 0xE0)},
    0xE0: (0xA0, 0xBF, 3),
    **{lead: (0x80, 0xBF, 3) for lead in range(0xE1, 0xED)},
    0xED: (0x80, 0x9F, 3),
    **{lead: (0x80, 0xBF, 3) for lead in range(0xEE, 0xF0)},
    0xF0: (0x90, 0xBF, 4),
    **{lead: (0x80, 0xBF, 4) for lead in range(0xF1, 0xF4)},
    0xF4: (0x80, 0x8F, 4),
}


def first_invalid_byte(data: bytes) -> int | None:
    """Index of the first byte no valid UTF-8 can have there (``len(data)`` if it ends mid-character), or ``None``."""
    i = 0
    while i < len(data):
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if lead not in _SECOND:
            return i
        low, high, size = _SECOND[lead]
        for j in range(1, size):
            if i + j >= len(data):
                return len(data)
            b = data[i + j]
            if not (low <= b <= high if j == 1 else 0x80 <= b <= 0xBF):
                return i + j
        i += size
    return None


INVALID = [b"\xff", b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe0\x80\x80",
           b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xe2\x82", b"\xe2\x28\xa1", b"\xf0\x9f\x98"]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_invalid_utf8_fails_at_the_offending_fragment(data: st.DataObject) -> None:
    """Invalid UTF-8 split anywhere is 1007 at the fragment with its first bad byte, never after CPython's decoder."""
    prefix = data.draw(st.text(max_size=20)).encode()
    raw = prefix + data.draw(st.sampled_from(INVALID) | st.binary(min_size=1, max_size=6)) + data.draw(
        st.text(max_size=5)
    ).encode()
    pieces = fragment(data.draw, raw)
    bad = first_invalid_byte(raw)
    assembler = MessageAssembler()
    failed_at = None
    for index, frame in enumerate(as_frames(pieces, binary=False)):
        try:
            result = assembler.add(frame)
        except ProtocolError as error:
            assert error.code == CloseCode.INVALID_DATA
            failed_at = index
            break
    if bad is None:
        assert failed_at is None and result == (raw.decode(), False)
        return
    # The fragment holding byte `bad` (the last one when the text ends mid-character).
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    expected = next((i for i, end in enumerate(ends) if end > bad), len(pieces) - 1)
    assert failed_at == expected
    decoder = codecs.getincrementaldecoder("utf-8")()
    theirs = None
    for index, piece in enumerate(pieces):
        try:
            decoder.decode(piece, index == len(pieces) - 1)
        except UnicodeDecodeError:
            theirs = index
            break
    assert theirs is not None and failed_at <= theirs


def test_surrogate_prefix_fails_before_its_last_byte() -> None:
    """ED A0 (a UTF-16 surrogate's start) fails in its own fragment, though CPython's decoder waits for a third byte."""
    assembler = MessageAssembler()
    with pytest.raises(ProtocolError) as info:
        assembler.add(Frame(Opcode.TEXT, b"ok\xed\xa0", fin=False))
    assert info.value.code == CloseCode.INVALID_DATA


def test_message_size_across_fragments() -> None:
    """A message of exactly ``max_size`` passes; one byte more, in whichever fragment, is 1009 at that fragment."""
    assembler = MessageAssembler(max_size=10)
    assert assembler.add(Frame(Opcode.TEXT, b"x" * 10)) == ("x" * 10, False)
    assert assembler.add(Frame(Opcode.BINARY, b"x" * 6, fin=False)) is None
    assert assembler.add(Frame(Opcode.CONTINUATION, b"x" * 4)) == (b"x" * 10, True)
    for frames_sent in ([b"x" * 11], [b"x" * 6, b"x" * 5], [b"", b"x" * 10, b"y"]):
        assembler = MessageAssembler(max_size=10)
        sent = as_frames(frames_sent, binary=True)
        for frame in sent[:-1]:
            assert assembler.add(frame) is None
        with pytest.raises(ProtocolError) as info:
            assembler.add(sent[-1])
        assert info.value.code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    ("sequence", "text"),
    [
        ([Frame(Opcode.CONTINUATION, b"x")], "continuation"),
        ([Frame(Opcode.TEXT, b"x", False), Frame(Opcode.TEXT, b"y")], "non-continuation"),
        ([Frame(Opcode.BINARY, b"x", False), Frame(Opcode.BINARY, b"y")], "non-continuation"),
        ([Frame(Opcode.TEXT, b"x"), Frame(Opcode.CONTINUATION, b"y")], "continuation"),
    ],
)
def test_continuation_sequencing(sequence: list[Frame], text: str) -> None:
    """A continuation outside a fragmented message, or a new message inside one, is 1002."""
    assembler = MessageAssembler()
    for frame in sequence[:-1]:
        assembler.add(frame)
    with pytest.raises(ProtocolError) as info:
        assembler.add(sequence[-1])
    assert info.value.code == CloseCode.PROTOCOL_ERROR and text in info.value.message


@pytest.mark.parametrize("frame", [Frame(Opcode.PING, b""), Frame(Opcode.CLOSE, b""), Frame(Opcode.TEXT, b"x", rsv=4)])
def test_assembler_refuses_control_and_extension_frames(frame: Frame) -> None:
    """Control frames, and frames an extension has not decoded (RSV bits set), are a caller's mistake."""
    with pytest.raises(ValueError):
        MessageAssembler().add(frame)


def test_parser_and_assembler_with_interleaved_control_frames() -> None:
    """Pings between a fragmented message's frames come out of the parser in order, and the message whole."""
    wire = b"".join(
        encode_frame(op, payload, fin=fin, mask=KEY)
        for op, payload, fin in [
            (Opcode.TEXT, "Grüß ".encode()[:4], False),
            (Opcode.PING, b"1", True),
            (Opcode.CONTINUATION, "Grüß ".encode()[4:], False),
            (Opcode.PONG, b"2", True),
            (Opcode.CONTINUATION, b"Gott", True),
        ]
    )
    assembler = MessageAssembler()
    control, messages_out = [], []
    for frame in parse_all(wire):
        if frame.opcode > 7:
            control.append(frame.payload)
        elif (message := assembler.add(frame)) is not None:
            messages_out.append(message)
    assert control == [b"1", b"2"] and messages_out == [("Grüß Gott", False)]


# Unmasking: every implementation against the definition.

UNMASKERS: dict[str, Callable[[bytes, int, int, bytes], bytes] | None] = {
    "C": _masking._unmask_c,
    "NVX": _masking._unmask_nvx if _masking._native_masker is not None else None,
    "big-integer": _masking._unmask_int,
    "python": _masking._unmask_python,
}


@pytest.mark.parametrize("name", list(UNMASKERS))
def test_unmask_matches_the_definition(name: str) -> None:
    """Each unmasking path (C, autobahn's NVX, big-integer XOR, the fallback's choice) equals RFC 6455 5.3's XOR."""
    unmasker = UNMASKERS[name]
    if unmasker is None:
        pytest.skip(f"{name} is not available here")
    rng = random.Random(name)
    for length in [*range(70), 125, 126, 127, 2047, 2048, 2049, 65535, 65537]:
        key = rng.randbytes(4)
        payload = rng.randbytes(length)
        expected = reference_xor(payload, key)
        for before, after in ((0, 0), (3, 5)):
            data = rng.randbytes(before) + payload + rng.randbytes(after)
            assert unmasker(data, before, before + length, key) == expected, (length, before)


def test_unmask_is_the_c_helper_when_built() -> None:
    """The module's ``unmask`` is the C helper when it was compiled, and refuses bad keys and bounds either way."""
    if _masking._unmask_c is not None:
        assert unmask is _masking._unmask_c
    else:
        assert unmask is _masking._unmask_python
    for args in ((b"abc", 0, 4, b"keyk"), (b"abc", 0, 3, b"key")):
        with pytest.raises(ValueError):
            unmask(*args)


def test_python_fallback_without_nvx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without autobahn's NVX the fallback unmasks large payloads by big-integer XOR, with the same result."""
    monkeypatch.setattr(_masking, "_native_masker", None)
    payload = os.urandom(5000)
    assert _masking._unmask_python(payload, 0, 5000, KEY) == reference_xor(payload, KEY)
