"""The Autobahn|Testsuite fuzzing client against examples.echo served by `twistd crow`,
in Crow's default (lenient) mode and with --enforce-ws-spec.

The whole suite (517 cases) runs by default, as CI does: about 8 minutes a mode on this
machine, nearly all of it in groups 12 and 13 (permessage-deflate).
CROWTWIST_CONFORMANCE=quick leaves out groups 9, 12 and 13 (about 15 s a mode) for local work.
The tool is ../shared/tools/autobahn-testsuite (or $AUTOBAHN_TESTSUITE); it builds its own
Python 2.7 environment once and caches it under ~/.cache/autobahn-testsuite.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .proc import ROOT, Server, free_port, twistd

TOOL = Path(os.environ.get("AUTOBAHN_TESTSUITE", ROOT.parent / "shared" / "tools" / "autobahn-testsuite"))
QUICK = os.environ.get("CROWTWIST_CONFORMANCE", "full") == "quick"


@pytest.mark.parametrize("mode", ["lenient", "enforce"])
def test_autobahn_testsuite(mode: str, tmp_path: Path) -> None:
    """Every case of the fuzzing client passes (OK, NON-STRICT or INFORMATIONAL) in both masking modes."""
    if not TOOL.exists():
        pytest.fail(f"the conformance tool is missing at {TOOL} (set AUTOBAHN_TESTSUITE)")
    port = free_port()
    args = ["--routes", "examples.echo", "--listen", f"tcp:{port}:interface=127.0.0.1"]
    if mode == "enforce":
        args.append("--enforce-ws-spec")
    command = [str(TOOL), "--agent", f"crowtwist-{mode}", "--outdir", str(tmp_path / "report")]
    if QUICK:
        command += ["--exclude", "9.*,12.*,13.*"]
    with Server(twistd(*args)) as server:
        server.wait_tcp(port)
        result = subprocess.run(
            [*command, f"ws://127.0.0.1:{port}/echo"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=2400,
        )
        server.stop()
    summary = result.stdout.strip()
    report = os.environ.get("CROWTWIST_CONFORMANCE_REPORT")
    if report:
        Path(report).mkdir(parents=True, exist_ok=True)
        (Path(report) / f"{mode}.txt").write_text(summary + "\n")
    last = summary.splitlines()[-1] if summary else ""
    counts = re.fullmatch(r"(\d+) passed, (\d+) failed", last)
    assert counts is not None, f"no summary line from the tool:\n{summary}\n{result.stderr[-3000:]}"
    assert int(counts.group(2)) == 0 and result.returncode == 0, summary
    assert int(counts.group(1)) >= (247 if QUICK else 517), summary
