"""A real ``redis-server`` (Debian's package, installed by ci/system-packages) on 127.0.0.1 and a random port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .proc import free_port

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis() -> None:
    """Fail (not skip) when redis-server is missing: the README's test command installs it."""
    if not Path(REDIS).exists():
        pytest.fail("redis-server is not installed; run ci/system-packages (the README's test command does)")


class RedisServer:
    """One redis-server process; ``restart()`` brings it back on the same port (pub/sub state gone)."""

    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        port: int | None = None,
    ) -> None:
        require_redis()
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [REDIS, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited at once ({self.process.returncode}): {args}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str) -> Any:
        """One command through redis-cli-like plain RESP (only for plain-TCP servers)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = ([b"AUTH", self.password.encode()],) if self.password else ()
            for command in (*parts, [a.encode() for a in args]):
                sock.sendall(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in command))
                reply = sock.recv(65536)
            return reply
