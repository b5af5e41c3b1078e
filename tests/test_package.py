"""Package-level promises: the public names, py.typed, and the NVX check at import time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import crowtwist

ROOT = Path(__file__).resolve().parent.parent


def test_public_names() -> None:
    """The package's __all__ lists the Crow-named API."""
    assert {"Crow", "Response", "Connection", "WebSocketRule", "ConnectionsView"} <= set(crowtwist.__all__)
    for name in crowtwist.__all__:
        assert hasattr(crowtwist, name)


def test_close_codes_are_exported_under_both_names() -> None:
    """CloseCode is public in crowtwist and crowtwist.websocket, with Crow's CloseStatusCode as its alias."""
    from crowtwist import websocket

    assert crowtwist.CloseCode is websocket.CloseCode is crowtwist.CloseStatusCode is websocket.CloseStatusCode
    assert crowtwist.CloseCode.GOING_AWAY == crowtwist.CloseStatusCode.EndpointGoingAway == 1001
    assert set(websocket.__all__) <= set(dir(websocket))


def test_settings_live_in_their_own_module() -> None:
    """crowtwist.Settings is the one in crowtwist._settings, with the defaults beside it."""
    from crowtwist import _settings

    assert crowtwist.Settings is _settings.Settings
    defaults = (_settings.DEFAULT_PORT, _settings.DEFAULT_MAX_QUEUE, _settings.DEFAULT_MAX_QUEUE_BYTES)
    assert defaults == (18080, 16, 1 << 20)


def test_py_typed_is_shipped() -> None:
    """crowtwist ships a py.typed marker."""
    assert (ROOT / "crowtwist" / "py.typed").exists()


def test_nvx_in_use() -> None:
    """Where autobahn ships its NVX accelerators, crowtwist runs with them."""
    from autobahn.websocket import HAS_NVX

    assert crowtwist.accelerated() == HAS_NVX


def test_nvx_disabled_is_reported_at_import() -> None:
    """Importing crowtwist with NVX turned off says so once, as a RuntimeWarning."""
    from autobahn.websocket import HAS_NVX

    if not HAS_NVX:
        return
    env = dict(os.environ, AUTOBAHN_USE_NVX="0", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import crowtwist"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0
    assert result.stderr.count("NVX accelerators are installed but disabled") == 1
