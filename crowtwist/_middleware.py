"""Crow's middleware: ``before_handle`` and ``after_handle`` around a route's handler.

A middleware is an object with either method or both (subclass ``Middleware``
for the defaults).  Each request gets, for each middleware that runs on it, a
fresh context (``ctx``): an instance of the middleware's ``Context`` class,
as Crow's ``struct context``.  ``before_handle`` runs in declaration order
(app-wide first, then a blueprint's, then the route's own), ``after_handle``
in reverse order, for those whose ``before_handle`` ran.  A ``before_handle``
that ends the response (``res.end()``) stops the chain: the handler is not
called, and the middleware before it unwind.  Either method may return a
Deferred or be ``async def``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Context", "Middleware", "contexts_of"]


class Context:
    """The default per-request context: an empty object to put attributes on."""

    def __repr__(self) -> str:
        return f"<Context {vars(self)!r}>"


class Middleware:
    """A base for middleware: both methods do nothing; override either."""

    Context: type[Any] = Context
    """Instantiated with no arguments once per request, and passed as ``ctx``."""

    def before_handle(self, req: Any, res: Any, ctx: Any) -> object:
        """Before the handler: inspect ``req``; ``res.end()`` answers with ``res`` at once."""
        return None

    def after_handle(self, req: Any, res: Any, ctx: Any) -> object:
        """After the handler (or a ``before_handle`` that ended): change ``res`` before it is sent."""
        return None


def contexts_of(raw: Any) -> dict[object, Any]:
    """The contexts of the middleware run on twisted.web request ``raw``, by middleware class and by ``id``."""
    contexts: dict[object, Any] | None = getattr(raw, "crow_contexts", None)
    if contexts is None:
        contexts = {}
        raw.crow_contexts = contexts
    return contexts
