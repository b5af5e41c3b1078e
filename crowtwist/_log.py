"""crowtwist's logger: twisted.logger's, with failures at ``error`` and a level of its own.

twisted.logger's ``Logger.failure`` logs at ``critical`` unless told
otherwise; a handler that raised is an error of the app's, not of the
process, and the README's log levels say so.

twisted.logger filters in observers, and twistd's observer filters nothing:
an event emitted is an event printed.  So crowtwist's own events pass a
threshold here, before any observer sees them: ``info`` unless
``set_log_level`` (``twistd crow --log-level``) says otherwise.  Code that
would build a debug line's arguments checks ``log.debugging`` first, so
that the line costs one attribute read when debug is off.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["LEVEL_NAMES", "CrowLogger", "log", "log_level", "set_log_level"]


_ORDER: tuple[LogLevel, ...] = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)

LEVEL_NAMES: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
"""The names ``set_log_level`` takes (``warning`` is ``warn``, as in the stdlib's ``logging``)."""


class CrowLogger(Logger):
    """A ``Logger`` that drops events below the threshold set with ``set_log_level``."""

    _enabled: frozenset[LogLevel] = frozenset(_ORDER[1:])
    debugging = False
    """Whether debug events are emitted: check it before building a debug line."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level in self._enabled:
            Logger.emit(self, level, format, **kwargs)

    def failure(  # the same call, another default level
        self, format: str, failure: Failure | None = None, level: LogLevel = LogLevel.error, **kwargs: Any
    ) -> None:
        Logger.failure(self, format, failure, level, **kwargs)


log = CrowLogger(namespace="crowtwist")
"""The one logger of the namespace ``crowtwist``."""


def set_log_level(level: str | LogLevel) -> None:
    """Emit crowtwist's log events at ``level`` and above: ``"debug"``, ``"info"`` (the default),
    ``"warn"``, ``"error"`` or ``"critical"``, or a ``twisted.logger.LogLevel``.

    ``debug`` adds a line per WebSocket opened and closed.  Observers may
    filter further; this only decides what crowtwist emits.
    """
    if isinstance(level, str):
        found = LEVEL_NAMES.get(level.strip().lower())
        if found is None:
            raise ValueError(f"log level {level!r} is none of {', '.join(n for n in LEVEL_NAMES if n != 'warning')}")
        level = found
    elif level not in _ORDER:
        raise ValueError(f"log level {level!r} is no twisted.logger.LogLevel")
    # On the class, so that a logger made from this one (Logger.__get__) follows it too.
    CrowLogger._enabled = frozenset(_ORDER[_ORDER.index(level):])
    CrowLogger.debugging = level is LogLevel.debug


def log_level() -> LogLevel:
    """The threshold ``set_log_level`` set: the lowest level crowtwist emits."""
    for level in _ORDER:
        if level in CrowLogger._enabled:
            return level
    raise AssertionError("no level enabled")  # pragma: no cover - set_log_level always enables critical
