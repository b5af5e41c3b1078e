from __future__ import annotations

from typing import Any
from collections.abc import Iterator

import pytest
from twisted.logger import LogLevel, globalLogPublisher


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") is level]

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)
