"""Real processes for the deployment tests: ``twistd`` started the way an operator starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(**extra: str) -> dict[str, str]:
    """The environment for a child: this working tree first on the path."""
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), result.get("PYTHONPATH", "")]))
    result.update(extra)
    return result


class Server:
    """A server process; ``stop()`` sends SIGTERM and waits, bounded."""

    def __init__(
        self, args: list[str], cwd: Path = ROOT, environ: dict[str, str] | None = None, session: bool = False
    ) -> None:
        # A file, not a pipe: nobody reads while the server runs, and a full pipe would block it.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            env=environ or env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group, for a test that signals the whole group as a terminal's Ctrl-C does.
            start_new_session=session,
        )
        self.output = ""

    def wait_tcp(self, port: int, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early ({self.process.returncode}):\n{self.finish()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nothing listened on {port} within {seconds}s:\n{self.stop()}")

    def wait_unix(self, path: Path, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.finish()}")
            if path.exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"no socket at {path} within {seconds}s:\n{self.stop()}")

    def finish(self, seconds: float = 30.0) -> str:
        self.process.wait(timeout=seconds)
        self._log.seek(0)
        self.output = self._log.read()
        return self.output

    def stop(self, sig: int = signal.SIGTERM, seconds: float = 30.0) -> str:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.finish(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.finish()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.finish()


def twistd(*args: str, reactor: str | None = None, bin_dir: Path = BIN) -> list[str]:
    command = [str(bin_dir / "twistd")]
    if reactor:
        command += ["-r", reactor]
    return command + ["-n", "--pidfile=", "crow", *args]
