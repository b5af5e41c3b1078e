"""Placeholder until the full request module lands: Crow's request over twisted.web's."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request as TwistedRequest

__all__ = ["Request"]


class Request:
    """Crow's ``crow::request`` over twisted.web's ``Request`` (``raw``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: TwistedRequest) -> None:
        object.__setattr__(self, "raw", raw)

    @classmethod
    def of(cls, raw: TwistedRequest) -> Request:
        """The one wrapper of ``raw``."""
        found: Request | None = getattr(raw, "crow_request", None)
        if found is None:
            found = cls(raw)
            raw.crow_request = found  # type: ignore[attr-defined]
        return found

    @property
    def method(self) -> str:
        return str(self.raw.method.decode("latin-1"))

    @property
    def url(self) -> str:
        return str(self.raw.path.decode("latin-1"))

    def get_header_value(self, name: str) -> str:
        value = self.raw.getHeader(name)
        return "" if value is None else value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.raw, name, value)
