"""autobahn's internals, in one place (this package), behind a guard.

crowtwist's speed comes from skipping autobahn's general paths where a
connection does not need them: per-connection set-up, handshake completion,
debug formatting on every write, the frame state machine for plain frames.
That means relying on names autobahn does not document.  Every such use is
in this package: ``FastProtocol`` (``_fast``, with its closing half in
``_closing``), a ``WebSocketServerProtocol`` whose overrides each say what
they rely on, and ``fast_factory``; the rest of crowtwist speaks to a
connection through ``FastProtocol``'s own methods, or autobahn's documented API.

At import, ``_guard`` checks every name, signature and assignment the fast
paths copy or call.  When one does not hold, ``FAST`` is false, one line is
logged, and ``_public.PublicProtocol`` serves every connection on autobahn's
documented hooks: slower, still correct and conformant.
``CROWTWIST_PUBLIC_PATHS=autobahn`` (or ``all``) forces that, for the tests.
"""

from ._fast import FastProtocol, fast_factory
from ._guard import FAST, PROBLEMS, is_forced_public, problems

__all__ = ["FAST", "FastProtocol", "PROBLEMS", "fast_factory", "is_forced_public", "problems"]
