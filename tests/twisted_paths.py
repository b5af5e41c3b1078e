"""Marking the few tests that check a detail only crowtwist's Twisted fast paths give."""

from __future__ import annotations

import pytest

from crowtwist._twisted import PUBLIC


def fast_paths_only(why: str) -> pytest.MarkDecorator:
    """Skip under Twisted's public paths (``CROWTWIST_PUBLIC_PATHS=twisted``), saying what they lack."""
    return pytest.mark.skipif(PUBLIC, reason=f"Twisted's public paths: {why}")
