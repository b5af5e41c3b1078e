"""The Autobahn|Testsuite fuzzing client against examples.echo served by `twistd crow`,
in Crow's default (lenient) mode and with --enforce-ws-spec, both at once.

The whole suite (517 cases) runs by default, as CI does. Nearly all of its time is groups
12 and 13 (permessage-deflate: 1000 echoes of up to 128 KiB a case, zlib at both ends);
the two modes run side by side so their waits overlap. CROWTWIST_CONFORMANCE=quick leaves
out groups 12 and 13 (about 45 s) for local work. docs/conformance.md has the timings.
The tool is $AUTOBAHN_TESTSUITE, else ../shared/tools/autobahn-testsuite beside this checkout,
else /work/shared/tools/autobahn-testsuite; it builds its own
Python 2.7 environment once and caches it under ~/.cache/autobahn-testsuite.
Set CROWTWIST_CONFORMANCE_REPORT=DIR to keep each mode's summary.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from .proc import ROOT, Server, env, free_port, twistd

_CANDIDATES = [
    os.environ.get("AUTOBAHN_TESTSUITE", ""),
    str(ROOT.parent / "shared" / "tools" / "autobahn-testsuite"),  # beside this checkout
    "/work/shared/tools/autobahn-testsuite",  # the workplace's shared tools, for clones elsewhere
]
TOOL = next((Path(c) for c in _CANDIDATES if c and Path(c).exists()), Path(_CANDIDATES[1]))
QUICK = os.environ.get("CROWTWIST_CONFORMANCE", "full") == "quick"
MODES = {"lenient": [], "enforce": ["--enforce-ws-spec"]}


def test_autobahn_testsuite_both_modes(tmp_path: Path) -> None:
    """Every case passes (OK, NON-STRICT or INFORMATIONAL) with and without masking enforcement."""
    if not TOOL.exists():
        pytest.fail(f"the conformance tool is missing at {TOOL} (set AUTOBAHN_TESTSUITE)")
    # One install first, so the two runs below do not both build the cached environment.
    subprocess.run([str(TOOL), "--install-only"], check=True, capture_output=True, timeout=1200)
    servers: dict[str, Server] = {}
    runs: dict[str, subprocess.Popen[str]] = {}
    started = time.monotonic()
    try:
        for mode, extra in MODES.items():
            port = free_port()
            environ = env()
            # Coverage would slow these servers several-fold; other tests measure twistd crow.
            environ.pop("COVERAGE_PROCESS_CONFIG", None)
            servers[mode] = Server(
                twistd("--routes", "examples.echo", "--listen", f"tcp:{port}:interface=127.0.0.1", *extra),
                environ=environ,
            )
            servers[mode].wait_tcp(port)
            command = [str(TOOL), "--agent", f"crowtwist-{mode}", "--outdir", str(tmp_path / mode)]
            if QUICK:
                command += ["--exclude", "12.*,13.*"]
            (tmp_path / mode).mkdir()
            runs[mode] = subprocess.Popen(
                [*command, f"ws://127.0.0.1:{port}/echo"],
                cwd=tmp_path / mode,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        results = {mode: run.communicate(timeout=4200) for mode, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
        for server in servers.values():
            server.stop()
    elapsed = time.monotonic() - started
    report = os.environ.get("CROWTWIST_CONFORMANCE_REPORT")
    for mode, (out, err) in results.items():
        summary = out.strip()
        if report:
            Path(report).mkdir(parents=True, exist_ok=True)
            (Path(report) / f"{mode}.txt").write_text(f"{summary}\nwall time (both modes at once): {elapsed:.0f} s\n")
        last = summary.splitlines()[-1] if summary else ""
        counts = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
        assert counts is not None, f"{mode}: no summary line from the tool:\n{summary}\n{err[-3000:]}"
        assert int(counts.group(2)) == 0 and runs[mode].returncode == 0, f"{mode}:\n{summary}"
        assert int(counts.group(1)) >= (301 if QUICK else 517), f"{mode}:\n{summary}"
