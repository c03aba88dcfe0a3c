"""Wrong viewer keys are counted per client address: past VIEWER_LOGIN_FAILURES within
VIEWER_LOGIN_WINDOW_S its logins and Bearer keys are a 429 with Retry-After until the window has
passed, the right key too; other addresses and session cookies go on; memory stays bounded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx2
import pytest

from fastapi_server.viewer import create_viewer_app
from fastapi_server.viewer.auth import COOKIE
from fastapi_server.viewer.guess_limit import GuessLimit, source
from tests.support import LiveServer
from tests.test_viewer_api import VIEWER_KEY, viewer_settings

FAILURES = 3
WINDOW_S = 300.0
# uvicorn takes the client's address from X-Forwarded-For sent by 127.0.0.1 (its default
# FORWARDED_ALLOW_IPS), as behind a reverse proxy on this host: each test is its own client.
ADDRESSES = (f"192.0.2.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def viewer(pg_dsn, tmp_path_factory) -> Iterator[LiveServer]:
    settings = viewer_settings(
        pg_dsn,
        tmp_path_factory.mktemp("viewer"),
        viewer_login_failures=FAILURES,
        viewer_login_window_s=WINDOW_S,
    )
    with LiveServer(create_viewer_app(settings)) as server:
        yield server


@pytest.fixture
def browser(viewer) -> Iterator[httpx2.Client]:
    headers = {"X-Forwarded-For": next(ADDRESSES)}
    with httpx2.Client(base_url=viewer.url, headers=headers, timeout=10) as client:
        yield client


def _login(client: httpx2.Client, key: str) -> httpx2.Response:
    return client.post("/login", data={"key": key}, follow_redirects=False)


def _refused_for_a_while(response: httpx2.Response) -> None:
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["retry-after"]) <= WINDOW_S
    assert response.json()["error"]["code"] == "too_many_attempts"
    assert VIEWER_KEY not in response.text


def test_past_the_limit_logins_are_429_the_right_key_too(browser, viewer):
    assert _login(browser, VIEWER_KEY).status_code == 303
    session = browser.cookies[COOKIE]
    browser.cookies.clear()
    for n in range(FAILURES):
        failed = _login(browser, f"guess-{n}")
        assert failed.headers["location"] == "/login?failed=1"
    _refused_for_a_while(_login(browser, "guess-again"))
    _refused_for_a_while(_login(browser, VIEWER_KEY))  # or a guesser would ignore the 429s
    assert COOKIE not in browser.cookies
    bearer = {"Authorization": f"Bearer {VIEWER_KEY}"}
    _refused_for_a_while(browser.get("/api/viewer/threads", headers=bearer))
    # A session from before is no guess: it goes on.
    with_session = browser.get("/api/viewer/threads", cookies={COOKIE: session})
    assert with_session.status_code == 200
    # Nor does one address lock out another.
    with httpx2.Client(base_url=viewer.url, headers={"X-Forwarded-For": next(ADDRESSES)}) as other:
        assert _login(other, VIEWER_KEY).headers["location"] == "/"


def test_wrong_bearer_keys_count_as_wrong_logins(browser):
    for n in range(FAILURES):
        refused = browser.get("/api/viewer/threads", headers={"Authorization": f"Bearer g{n}"})
        assert refused.status_code == 401
    _refused_for_a_while(_login(browser, VIEWER_KEY))


def test_a_right_key_forgives_the_typos_before_it(browser):
    for _ in range(2):
        for n in range(FAILURES - 1):
            assert _login(browser, f"typo-{n}").headers["location"] == "/login?failed=1"
        assert _login(browser, VIEWER_KEY).headers["location"] == "/"


# ---- the limit itself, on a clock of its own -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_passes_and_the_address_may_try_again():
    clock = Clock()
    limit = GuessLimit(failures=2, window_s=60, clock=clock)
    limit.failed("10.0.0.1")
    clock.now += 30
    limit.failed("10.0.0.1")
    assert limit.retry_after("10.0.0.1") == 30  # counted from the window's first failure
    assert limit.retry_after("10.0.0.2") is None
    clock.now += 29.5
    assert limit.retry_after("10.0.0.1") == 1
    clock.now += 0.5
    assert limit.retry_after("10.0.0.1") is None
    limit.failed("10.0.0.1")  # a new window, with one failure in it
    assert limit.retry_after("10.0.0.1") is None


def test_many_addresses_take_bounded_memory():
    limit = GuessLimit(failures=1, window_s=60, max_addresses=1000, clock=Clock())
    for n in range(50_000):
        limit.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limit) == 1000
    assert limit.retry_after("10.0.195.79") is not None  # the latest are still counted


def test_an_ipv6_host_is_its_64():
    assert source("2001:db8:1:2:aaaa::1") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::1") != source("2001:db8:1:2::1")
    assert source("::ffff:192.0.2.1") == "192.0.2.1"
    assert source("192.0.2.1") == "192.0.2.1"
    assert source("") == ""
