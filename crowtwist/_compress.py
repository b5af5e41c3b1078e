"""Placeholder until the compression module lands."""

from __future__ import annotations

from twisted.web.server import Request

__all__ = ["compress_body"]


def compress_body(request: Request, body: bytes, content_type: str | None) -> bytes:
    """The bytes to send for ``body`` (placeholder: unchanged)."""
    return body
