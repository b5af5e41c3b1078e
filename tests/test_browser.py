"""The chat demo as a person sees it: headless Chromium, driven by Selenium, against a real ``twistd``.

Debian's ``chromium`` and ``chromium-driver`` (``ci/system-packages`` installs them) and Selenium
(the ``test`` extra) are required: without them these tests fail, saying what to install.

Screenshots go to ``$CROWTWIST_SCREENSHOTS``, or ``build/screenshots/`` in the working tree when
it is not set; each test prints where, and how long it took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .proc import ROOT, BIN, Server, env, free_port, twistd

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(os.environ.get("CROWTWIST_SCREENSHOTS") or ROOT / "build" / "screenshots")
WAIT = 30.0
"""Seconds any one condition in the page may take (a reconnect's backoff included)."""
# Chromium's own traffic is off: the machine's network is closed, and the tests need none of it.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1024,768",
]
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def _selenium() -> Any:
    """The selenium package, or a failure saying how to get it and the browser."""
    try:
        import selenium.webdriver
    except ImportError:
        pytest.fail("Selenium is missing: pip install '.[test]' (tests/test_browser.py drives Chromium with it)")
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: run ci/system-packages (Debian's chromium and chromium-driver); "
            "tests/test_browser.py needs a real browser"
        )
    return selenium.webdriver


class Page:
    """One person's browser tab on the chat page."""

    def __init__(self, driver: Any, label: str) -> None:
        self.driver = driver
        self.label = label

    def wait(self, condition: Callable[[], object], what: str, seconds: float = WAIT) -> Any:
        """Wait (bounded) until ``condition()`` is truthy; on timeout, fail saying what and showing the page."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, seconds, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            shot = self.screenshot(f"timeout-{self.label}")
            raise AssertionError(
                f"{self.label}: not {what} within {seconds} s; status {self.status()!r}; "
                f"log {self.lines()[-8:]!r}; screenshot {shot}"
            ) from None

    def wait_state(self, *states: str) -> None:
        """Wait until the page's connection state (the status line's ``data-state``) is one of ``states``."""
        self.wait(lambda: self.status()[0] in states, " or ".join(states))

    def js(self, script: str, *args: object) -> Any:
        return self.driver.execute_script(script, *args)

    def status(self) -> tuple[str, str]:
        return tuple(self.js("const s = document.getElementById('status'); return [s.dataset.state, s.textContent];"))

    def lines(self) -> list[str]:
        return list(self.js("return Array.from(document.querySelectorAll('#log li'), li => li.textContent);"))

    def messages(self) -> list[tuple[str, str, bool]]:
        """(name, text, pending) of each message in the log."""
        return [
            tuple(item)
            for item in self.js(
                "return Array.from(document.querySelectorAll('#log li.message'), li => "
                "[li.querySelector('.who').textContent, li.querySelector('.text').textContent, "
                "li.classList.contains('pending')]);"
            )
        ]

    def join(self, name: str) -> None:
        """Answer the name prompt and wait until the page is online."""
        from selenium.webdriver.common.by import By

        self.wait(lambda: self.driver.find_element(By.ID, "name").is_displayed(), "asking for a name")
        box = self.driver.find_element(By.ID, "name")
        box.send_keys(name)
        box.submit()
        self.wait_state("online")
        self.wait(lambda: any(f"as {name}" in line for line in self.lines()), "welcomed")

    def say(self, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = self.driver.find_element(By.ID, "text")
        box.send_keys(text + Keys.ENTER)

    def sees_message(self, name: str, text: str, pending: bool = False) -> None:
        self.wait(lambda: (name, text, pending) in self.messages(), f"showing {name}: {text!r}")

    def sees_line(self, fragment: str) -> None:
        self.wait(lambda: any(fragment in line for line in self.lines()), f"showing a line with {fragment!r}")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        """What the page logged that points at the page itself (a script error, a refused resource)."""
        entries = self.driver.get_log("browser")
        # Failed WebSocket connections are logged too; while a server restarts they are expected.
        return [
            entry["message"]
            for entry in entries
            if entry["level"] == "SEVERE" and "WebSocket connection to" not in entry["message"]
        ]


@pytest.fixture
def browser(tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    """Open Chromium windows on demand (``browser(label, phone=False)``); each has its own fresh profile."""
    webdriver = _selenium()
    from selenium.webdriver.chrome.service import Service

    started = time.monotonic()
    drivers: list[Any] = []

    def open_page(label: str, phone: bool = False) -> Page:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS + [f"--user-data-dir={tmp_path / ('profile-' + label)}", "--ignore-certificate-errors"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        drivers.append(driver)
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        if phone:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
        return Page(driver, label)

    try:
        yield open_page
    finally:
        for driver in drivers:
            driver.quit()
        with capsys.disabled():
            print(f"\n{request.node.name}: {time.monotonic() - started:.1f} s, screenshots in {SCREENSHOTS}")


def served(*args: str) -> Server:
    return Server(twistd(*args))


def chat_server(port: int, *extra: str) -> Server:
    server = served("--routes", "examples.chat", "--listen", f"tcp:{port}:interface=127.0.0.1", *extra)
    server.wait_tcp(port)
    return server


def test_two_pages_talk_and_see_each_other_leave(browser: Callable[..., Page]) -> None:
    """Two pages in one room: joined notices, a message typed in one appears in the other with a time,
    an empty one is not sent, a phone-sized window keeps the input in view under a scrolling log,
    and closing one page shows "left" in the other."""
    port = free_port()
    with chat_server(port) as server:
        ann = browser("ann")
        ann.driver.get(f"http://127.0.0.1:{port}/")
        ann.wait(lambda: ann.driver.current_url.endswith("/room/lobby"), "redirected to /room/lobby")
        ann.join("ann")
        bob = browser("bob", phone=True)
        bob.driver.get(f"http://127.0.0.1:{port}/room/lobby")
        bob.join("bob")
        ann.sees_line("bob joined")

        ann.say("hello from ann")
        bob.sees_message("ann", "hello from ann")
        ann.sees_message("ann", "hello from ann")  # no longer pending: the server sent it back
        shown, age = bob.js(
            "const t = document.querySelector('#log li.message time'); return [t.textContent, Date.now() - Date.parse(t.dateTime)];"
        )
        assert shown and abs(age) < 60_000, (shown, age)  # the server's time of the message

        ann.say("<img src=x onerror=alert(1)> & <b>not bold</b>")
        bob.sees_message("ann", "<img src=x onerror=alert(1)> & <b>not bold</b>")  # as text, not markup
        assert bob.js("return document.querySelectorAll('#log img, #log b').length") == 0

        before = len(ann.lines())
        ann.say("   ")
        ann.wait(lambda: ann.js("return !document.getElementById('hint').hidden"), "hinting that the message is empty")
        assert len(ann.lines()) == before and "   " not in [m[1] for m in bob.messages()]

        for n in range(40):
            ann.say(f"line {n}")
        bob.sees_message("ann", "line 39")
        layout = bob.js(
            "const log = document.getElementById('log'), box = document.getElementById('text');"
            "const last = log.lastElementChild.getBoundingClientRect(), r = box.getBoundingClientRect();"
            "return {inner: innerWidth, height: innerHeight, boxBottom: r.bottom, boxRight: r.right,"
            " scrolls: log.scrollHeight > log.clientHeight, lastBottom: last.bottom,"
            " logBottom: log.getBoundingClientRect().bottom, wide: document.documentElement.scrollWidth};"
        )
        assert layout["inner"] == PHONE["width"], layout
        assert layout["boxBottom"] <= layout["height"] and layout["boxRight"] <= layout["inner"], layout
        assert layout["scrolls"] and layout["lastBottom"] <= layout["logBottom"] + 1, layout  # follows the newest
        assert layout["wide"] <= layout["inner"], layout  # nothing wider than the phone
        ann.screenshot("chat-ann")
        bob.screenshot("chat-bob-phone")

        bob.driver.close()  # the tab, as a person closes it
        ann.sees_line("bob left")
        ann.screenshot("chat-ann-after-bob-left")
        assert ann.console_errors() == []
        assert "Traceback" not in server.stop()


def test_server_restart_reconnects_and_sends_what_was_typed_offline(browser: Callable[..., Page]) -> None:
    """Stopping the server shows the offline state and the retry countdown; a message typed meanwhile is
    shown as not sent, then delivered after the server is back on the same port; so is a new one."""
    port = free_port()
    server = chat_server(port)
    try:
        ann, bob = browser("ann"), browser("bob", phone=True)
        for page, name in ((ann, "ann"), (bob, "bob")):
            page.driver.get(f"http://127.0.0.1:{port}/room/restart")
            page.join(name)
        ann.say("before the restart")
        bob.sees_message("ann", "before the restart")

        assert "Traceback" not in server.stop()
        for page in (ann, bob):
            page.wait_state("offline", "reconnecting")
        ann.sees_line("disconnected")
        ann.say("typed while offline")
        ann.sees_message("ann", "typed while offline", pending=True)
        ann.wait(lambda: "retrying in" in ann.status()[1] and "1 unsent" in ann.status()[1], "counting down")
        assert ann.js("return document.querySelector('#log li.pending .state').textContent").startswith("not sent yet")
        ann.screenshot("restart-ann-offline")
        bob.screenshot("restart-bob-phone-offline")

        server = chat_server(port)
        for page in (ann, bob):
            page.wait_state("online")
        bob.sees_message("ann", "typed while offline")
        ann.sees_message("ann", "typed while offline")
        ann.sees_line("back online")
        bob.say("after the restart")
        ann.sees_message("bob", "after the restart")
        ann.screenshot("restart-ann-back")
        bob.screenshot("restart-bob-phone-back")
        assert ann.console_errors() == [] and bob.console_errors() == []
    finally:
        server.stop()


def test_mounted_under_a_prefix(browser: Callable[..., Page]) -> None:
    """examples/service.tac mounts the demo under /crow/: the page lands in /crow/room/lobby and its
    WebSocket keeps the prefix."""
    crow_port, site_port = free_port(), free_port()
    with Server(
        [str(BIN / "twistd"), "-n", "--pidfile=", "-y", str(ROOT / "examples" / "service.tac")],
        environ=env(CROW_PORT=str(crow_port), SITE_PORT=str(site_port)),
    ) as server:
        server.wait_tcp(site_port)
        ann, bob = browser("ann"), browser("bob")
        ann.driver.get(f"http://127.0.0.1:{site_port}/crow")
        ann.wait(lambda: ann.driver.current_url == f"http://127.0.0.1:{site_port}/crow/room/lobby", "at /crow/room/lobby")
        ann.join("ann")
        bob.driver.get(f"http://127.0.0.1:{site_port}/crow/")
        bob.wait(lambda: bob.driver.current_url.endswith("/crow/room/lobby"), "at /crow/room/lobby")
        bob.join("bob")
        bob.say("under a prefix")
        ann.sees_message("bob", "under a prefix")
        ann.screenshot("prefix-ann")
        assert ann.console_errors() == []
        assert "Traceback" not in server.stop()


def test_a_refused_name_is_asked_again(browser: Callable[..., Page]) -> None:
    """A name the server refuses (here a bidi override) brings the name prompt back with the server's
    reason instead of a reconnect loop; a good name then joins, and "change name" rejoins under another."""
    port = free_port()
    with chat_server(port) as server:
        ann = browser("ann")
        ann.driver.get(f"http://127.0.0.1:{port}/room/names")
        ann.wait(lambda: ann.js("return !document.getElementById('naming').hidden"), "asking for a name")
        ann.js("document.getElementById('name').value = 'ann\\u202Egnp.exe'")
        ann.js("document.getElementById('naming').requestSubmit()")
        ann.wait_state("refused")
        ann.wait(lambda: "U+202E" in ann.js("return document.getElementById('name-problem').textContent"), "saying why")
        assert ann.js("return !document.getElementById('naming').hidden")
        ann.screenshot("name-refused")
        ann.js("document.getElementById('name').value = ''")
        ann.join("ann")
        ann.js("document.getElementById('rename').click()")
        ann.js("document.getElementById('name').value = ''")
        ann.join("anna")
        assert ann.js("return document.getElementById('me').textContent") == "as anna"
        assert ann.console_errors() == []
        assert "Traceback" not in server.stop()


def test_over_tls(browser: Callable[..., Page], tmp_path: Path) -> None:
    """Served over https://, the page opens wss:// (a ws:// socket would be blocked as mixed content)."""
    from .test_twistd import make_certificate

    key, cert = make_certificate(tmp_path)
    port = free_port()
    with served(
        "--routes", "examples.chat", "--listen", f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    ) as server:
        server.wait_tcp(port)
        ann, bob = browser("ann"), browser("bob")
        for page, name in ((ann, "ann"), (bob, "bob")):
            page.driver.get(f"https://127.0.0.1:{port}/room/secure")
            page.join(name)
        ann.say("over TLS")
        bob.sees_message("ann", "over TLS")
        bob.screenshot("tls-bob")
        assert ann.console_errors() == [] and bob.console_errors() == []
        assert "Traceback" not in server.stop()
