"""The wheel, installed into a fresh virtual environment (not editable), serves through twistd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .proc import ROOT, Server, free_port


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.fast_paths("close code")
def test_wheel_in_fresh_venv(tmp_path: Path) -> None:
    """A built wheel installs twisted/plugins/crowtwist_plugin.py (and the C helper) and nothing of Twisted's own;
    its twistd lists crow, serves a module's echo, and SIGTERM gives the client 1001 and exit 0."""
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT)
    (wheel,) = dist.glob("crowtwist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/crowtwist_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "crowtwist/py.typed" in names and "crowtwist/_speedups.pyi" in names
    assert any(name.startswith("crowtwist/_speedups.") and name.endswith(".so") for name in names)
    assert not any(name.startswith(("tests/", "examples/")) for name in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "-q", wheel)
    assert "crow " in run(bin_dir / "twistd", "--help")

    app_dir = tmp_path / "site"
    app_dir.mkdir()
    (app_dir / "echoapp.py").write_text(
        textwrap.dedent(
            """
            from crowtwist import Crow
            app = Crow()
            app.route("/ws").websocket().onmessage(
                lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data))
            """
        )
    )
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    port = free_port()
    with Server(
        [str(bin_dir / "twistd"), "-n", "--pidfile=", "crow", "--routes", "echoapp",
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=app_dir,
        environ=environ,
    ) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            ws.send("from the wheel")
            assert ws.recv(timeout=10) == "from the wheel"
            ws.send(b"\xff" * 100_000)  # unmasked by the wheel's compiled helper
            assert ws.recv(timeout=10) == b"\xff" * 100_000
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish()
        assert server.process.returncode == 0, output
        assert str(env_dir) in output  # the installed copy ran, not this working tree


def _declared_bounds() -> dict[str, tuple[str, str | None]]:
    """setup.cfg's (floor, ceiling) for Twisted, autobahn, the redis extra's txredisapi and the test extra's selenium."""
    import configparser
    import re

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    bounds: dict[str, tuple[str, str | None]] = {}
    extras = config["options.extras_require"]
    lines = config["options"]["install_requires"].splitlines() + extras["redis"].splitlines() + extras["test"].splitlines()
    for line in lines:
        found = re.match(r"(twisted|autobahn|txredisapi|selenium)(?:\[\w+\])?>=([\d.]+)(?:,<=([\d.]+))?", line.strip())
        if found:
            bounds[found.group(1)] = (found.group(2), found.group(3))
    return bounds


def _release(text: str) -> tuple[int, ...]:
    """26.4 and 26.4.0 alike."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_the_suite_runs_at_a_declared_bound() -> None:
    """This run uses setup.cfg's ceilings (the README's install) or, under ci/test-floors, its floors."""
    from importlib.metadata import version

    bounds = _declared_bounds()
    assert set(bounds) == {"twisted", "autobahn", "txredisapi", "selenium"} and all(ceiling for _, ceiling in bounds.values())
    at_floors = os.environ.get("CROWTWIST_FLOORS") == "1"
    for name, (floor, ceiling) in bounds.items():
        expected = floor if at_floors else ceiling
        installed = version(name)
        assert _release(installed) == _release(expected or ""), (
            f"{name} {installed} installed; setup.cfg's {'floor' if at_floors else 'ceiling'} is {expected}"
        )
