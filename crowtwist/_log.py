"""crowtwist's logger: twisted.logger's, with failures logged at ``error``.

twisted.logger's ``Logger.failure`` logs at ``critical`` unless told
otherwise; a handler that raised is an error of the app's, not of the
process, and the README's log levels say so.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["log"]


class _Logger(Logger):
    def failure(  # the same call, another default level
        self, format: str, failure: Failure | None = None, level: LogLevel = LogLevel.error, **kwargs: Any
    ) -> None:
        Logger.failure(self, format, failure, level, **kwargs)


log: Logger = _Logger(namespace="crowtwist")
"""The one logger of the namespace ``crowtwist``."""
