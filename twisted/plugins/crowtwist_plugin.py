"""The ``twistd crow`` plugin: a pointer to ``crowtwist.tap``, imported only when used."""

from twisted.application.service import ServiceMaker

crow = ServiceMaker(
    "crowtwist",
    "crowtwist.tap",
    "Serve the HTTP and WebSocket routes of a Crow-style app (crowtwist).",
    "crow",
)
