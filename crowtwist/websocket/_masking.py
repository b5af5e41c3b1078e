"""Unmasking (RFC 6455 section 5.3), chosen in one place: ``unmask``.

The C helper (``crowtwist._speedups``, built by setup.py where a compiler is
at hand) when it was compiled; else a pure-Python fallback that uses
autobahn's native (NVX) masker for large payloads and one big-integer XOR
for small ones.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from autobahn.websocket import USES_NVX
from autobahn.websocket import xormasker

__all__ = ["unmask"]


def _unmask_int(data: bytes, start: int, end: int, key: bytes) -> bytes:
    """``data[start:end]`` XOR ``key`` as one big-integer XOR: pure Python, fastest below ~2 KiB."""
    length = end - start
    if not length:
        return b""
    mask = (key * ((length + 3) >> 2))[:length]
    return (int.from_bytes(data[start:end], "little") ^ int.from_bytes(mask, "little")).to_bytes(length, "little")


def _unmask_nvx(data: bytes, start: int, end: int, key: bytes) -> bytes:
    """``data[start:end]`` XOR ``key`` with autobahn's native (NVX, cffi) masker."""
    assert _native_masker is not None
    return bytes(_native_masker(key, end - start).process(data[start:end]))


def _unmask_python(data: bytes, start: int, end: int, key: bytes) -> bytes:
    """``data[start:end]`` XOR the repeated 4-byte ``key`` (RFC 6455 5.3), without the C helper."""
    if len(key) != 4:
        raise ValueError("the mask key must be 4 bytes")
    if not 0 <= start <= end <= len(data):
        raise ValueError("start and end must lie within data")
    if end - start >= _NATIVE_FROM and _native_masker is not None:
        return _unmask_nvx(data, start, end, key)
    return _unmask_int(data, start, end, key)


# Without the C helper: autobahn's native (NVX) masker costs ~4 us to set up,
# then runs at memory speed; one big-integer XOR is faster below ~2 KiB.
_NATIVE_FROM = 2048
_native_masker: Callable[[bytes, int], Any] | None = (
    getattr(xormasker, "create_xor_masker") if USES_NVX else None  # defined per backend, not re-exported
)

_unmask_c: Callable[[bytes, int, int, bytes], bytes] | None
try:
    from .._speedups import unmask as _unmask_c
except ImportError:  # not compiled (setup.py marks it optional)
    _unmask_c = None

unmask: Callable[[bytes, int, int, bytes], bytes] = _unmask_c if _unmask_c is not None else _unmask_python
"""``data[start:end]`` XOR the repeated 4-byte ``key`` (RFC 6455 section 5.3).

Masking and unmasking are the same operation.  The C helper when it was built
(it reads the slice in place), else ``_unmask_python``.
"""
