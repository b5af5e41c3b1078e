"""Calling user handlers: reading their arity once, and sync / Deferred / async results.

Crow's handler signatures grew between releases (``onerror(conn)`` became
``onerror(conn, message)``, ``onclose(conn, reason)`` gained the code).  A
handler is wrapped once, when it is registered: the wrapper knows how many of
the available arguments to pass, so no call pays for introspection.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, TypeVar
from collections.abc import Awaitable, Callable, Coroutine

from twisted.internet.defer import Deferred

__all__ = ["Handler", "as_deferred", "positional_arity", "user_location"]

T = TypeVar("T")


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_location() -> str:
    """``file:line`` of the innermost caller outside crowtwist: where the user declared what is checked."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            filename = os.path.abspath(frame.f_code.co_filename)
            if not filename.startswith(_PACKAGE):
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return "<unknown>"
    finally:
        del frame  # a frame held in a local keeps every caller's locals alive


def positional_arity(func: Callable[..., Any]) -> int | None:
    """How many positional arguments ``func`` takes; ``None`` means any number."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class Handler:
    """A user callable, fitted to an event that offers ``available`` arguments.

    ``required`` is the fewest arguments a handler for this event may take:
    a handler that takes fewer, or more than are offered, is rejected when it
    is registered, with a message that names the event.  ``call`` takes every
    argument the event offers and passes on the ones ``func`` takes; when it
    takes them all, ``call`` is ``func`` itself, so the common case costs no
    extra frame.
    """

    __slots__ = ("func", "event", "takes", "call")

    def __init__(self, func: Callable[..., Any], event: str, required: int, available: int) -> None:
        # Registered from the user's code (rule.onmessage(...), @rule.onclose): the error names that line.
        noun = event if event.endswith("handler") else f"{event} handler"
        if not callable(func):
            raise TypeError(f"{user_location()}: {noun} must be callable, not {type(func).__name__}")
        arity = positional_arity(func)
        if arity is not None and not required <= arity <= available:
            expected = str(required) if required == available else f"{required} to {available}"
            raise TypeError(
                f"{user_location()}: {noun} {getattr(func, '__qualname__', func)!r} takes {arity}"
                f" positional argument(s); {event} passes {expected}"
            )
        self._fit(func, event, available if arity is None else arity, available)

    def _fit(self, func: Callable[..., Any], event: str, takes: int, available: int) -> None:
        self.func = func
        self.event = event
        self.takes = takes
        if takes == available:
            self.call: Callable[..., Any] = func
        else:
            self.call = lambda *args: func(*args[:takes])

    @classmethod
    def fitted(cls, func: Callable[..., Any], event: str, takes: int) -> Handler:
        """A handler of ours whose arity is known, skipping the inspection."""
        handler = cls.__new__(cls)
        handler._fit(func, event, takes, takes)
        return handler

    def __call__(self, *args: Any) -> Any:
        """Call the handler with as many of ``args`` as it takes."""
        return self.call(*args)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def as_deferred(result: object) -> Deferred[Any] | None:
    """A Deferred for a result still to come, or ``None`` if ``result`` is final.

    Plain values stay plain so that a synchronous handler costs no Deferred.
    """
    if result is None:
        return None
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        coroutine: Coroutine[Any, Any, Any] = result
        return Deferred.fromCoroutine(coroutine)
    if inspect.isawaitable(result):
        return Deferred.fromCoroutine(_await(result))
    return None


