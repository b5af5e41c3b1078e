"""crowtwist's pytest plugin: the ``crow_client`` fixture.

Installed with crowtwist as the ``pytest11`` entry point ``crowtwist``, so
pytest loads it by itself; without the installed entry point, load it with
``pytest -p crowtwist.pytest_plugin`` or ``pytest_plugins = ["crowtwist.pytest_plugin"]``
in a test module or the root ``conftest.py``.

    @pytest_twisted.ensureDeferred
    async def test_hello(crow_client):
        client = crow_client(app)
        assert (await client.get("/")).text == "hello"

``crow_client(app, **options)`` makes a ``crowtwist.testing.CrowClient``;
each one made is closed when the test ends.  The client needs a running
reactor, which pytest-twisted gives; without it the fixture fails the test
with a message that says so, and nothing else changes.

This module imports neither Twisted's reactor nor crowtwist until the fixture
is used: pytest loads plugins before pytest-twisted installs the reactor it
was asked for (``--reactor``), and importing crowtwist would install the
default one first.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterator

import pytest

if TYPE_CHECKING:
    from .testing import CrowClient

__all__ = ["crow_client", "MISSING_PYTEST_TWISTED", "NAMES", "pytest_plugin_registered"]

NAMES = ("crowtwist", "crowtwist.pytest_plugin")
"""The plugin's names: the entry point's and the module's."""

MISSING_PYTEST_TWISTED = (
    "the crow_client fixture needs pytest-twisted, which runs the Twisted reactor the client moves its bytes on:"
    " pip install pytest-twisted, and write the test as"
    " `@pytest_twisted.ensureDeferred async def test_...` (or use crowtwist.testing.CrowClient under trial)"
)


def _pytest_twisted(config: pytest.Config) -> Any:
    """pytest-twisted's module when it is installed and active, else ``None``."""
    if not config.pluginmanager.hasplugin("twisted"):
        return None
    try:
        return importlib.import_module("pytest_twisted")
    except ImportError:  # registered under the name, but not the package (someone else's "twisted" plugin)
        return None


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Once this module is registered under one of its names, block the other.

    pytest refuses a module registered twice under two names, so an installed
    crowtwist (the entry point) together with ``-p crowtwist.pytest_plugin`` or
    ``pytest_plugins = ["crowtwist.pytest_plugin"]`` would stop the run.
    """
    if plugin is not sys.modules[__name__]:
        return
    mine = manager.get_name(plugin)
    for name in NAMES:
        if name != mine and manager.get_plugin(name) is None and not manager.is_blocked(name):
            manager.set_blocked(name)


@pytest.fixture
def crow_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., CrowClient]]:
    """A factory of ``CrowClient``s: ``crow_client(app, peer=..., host=..., timeout=...)``; all are closed at teardown."""
    pytest_twisted = _pytest_twisted(request.config)
    if pytest_twisted is None:
        pytest.fail(MISSING_PYTEST_TWISTED, pytrace=False)

    from .testing import CrowClient

    made: list[CrowClient] = []

    def make(app: Any, **options: Any) -> CrowClient:
        client = CrowClient(app, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        pytest_twisted.blockon(client.close())
