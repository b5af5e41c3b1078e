"""Micro-benchmark of the sans-I/O frame parser (crowtwist/websocket/_frames.py).

    .venv/bin/python benchmarks/frames.py

Prints the cost per frame of parsing one read of 16 masked 64-byte text
frames, and of one 64 KiB masked frame fed in 4 KiB reads (and 1 MiB in 4 KiB
reads, to show the cost stays linear), with the unmasking in use (the C helper
when it was built).
"""

from __future__ import annotations

import os
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crowtwist.websocket import _frames, _masking  # noqa: E402  (after the project root is on the path)
from crowtwist.websocket._encoding import encode_frame  # noqa: E402
from crowtwist.websocket._frames import FrameParser, Opcode  # noqa: E402
from crowtwist.websocket._messages import MessageAssembler  # noqa: E402


def small_frames(count: int = 16, size: int = 64) -> bytes:
    return b"".join(encode_frame(Opcode.TEXT, b"x" * size, mask=os.urandom(4)) for _ in range(count))


def parse_read(read: bytes, parser: FrameParser) -> int:
    parser.feed(read)
    count = 0
    next_frame = parser.next_frame
    while next_frame() is not None:
        count += 1
    return count


def parse_batches(read: bytes, parser: FrameParser) -> int:
    """What the protocol's receive loop does: frames() until it returns nothing."""
    parser.feed(read)
    count = 0
    while batch := parser.frames():
        count += len(batch)
    return count


def parse_and_assemble(read: bytes, parser: FrameParser, assembler: MessageAssembler) -> int:
    parser.feed(read)
    count = 0
    next_frame = parser.next_frame
    add = assembler.add
    while (frame := next_frame()) is not None:
        if add(frame) is not None:
            count += 1
    return count


def chunked(frame: bytes, chunk: int) -> int:
    parser = FrameParser()
    count = 0
    for i in range(0, len(frame), chunk):
        parser.feed(frame[i : i + chunk])
        if parser.needed:
            continue
        while parser.next_frame() is not None:
            count += 1
    return count


def best(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=7)) / number


def main() -> None:
    print(f"unmask: {'C helper' if _frames.unmask is _masking._unmask_c else 'Python'}")
    read = small_frames()
    # One parser (and assembler) per connection: what a read costs, not making them.
    parser = FrameParser(max_size=1 << 20)
    assembler = MessageAssembler(max_size=1 << 20)
    assert parse_read(read, parser) == 16
    per = best(lambda: parse_read(read, parser), 20000) / 16
    print(f"16 x 64 B masked text frames in one read: {per * 1e6:.3f} us per frame (parser)")
    assert parse_batches(read, parser) == 16
    per = best(lambda: parse_batches(read, parser), 20000) / 16
    print(f"  the same, in batches (frames(), the receive loop's call): {per * 1e6:.3f} us per frame")
    per = best(lambda: parse_and_assemble(read, parser, assembler), 20000) / 16
    print(f"  the same, with MessageAssembler (str messages): {per * 1e6:.3f} us per frame")
    big = encode_frame(Opcode.BINARY, os.urandom(65536), mask=os.urandom(4))
    assert chunked(big, 4096) == 1
    print(f"64 KiB masked frame in 4 KiB reads: {best(lambda: chunked(big, 4096), 2000) * 1e6:.1f} us per frame")
    huge = encode_frame(Opcode.BINARY, os.urandom(1 << 20), mask=os.urandom(4))
    for chunk in (4096, 512):
        assert chunked(huge, chunk) == 1
        cost = best(lambda: chunked(huge, chunk), 50)
        print(f"1 MiB masked frame in {chunk} B reads: {cost * 1e3:.2f} ms per frame")


if __name__ == "__main__":
    main()
