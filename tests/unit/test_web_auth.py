"""Sessions, login throttling, token comparison and the origin check, without a server."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from hub.web.auth import LoginThrottle, SessionStore, same_origin, tokens_equal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_equal_refuses_empty_and_wrong() -> None:
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abd", "abc")
    assert not tokens_equal("", "")
    assert not tokens_equal(None, "abc")
    assert not tokens_equal("abc", "")


def test_session_expires_and_is_dropped() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=60, clock=clock)
    sid, session = store.create("web")
    assert store.get(sid) is session
    assert store.get(sid + "x") is None
    clock.now += 61
    assert store.get(sid) is None
    assert len(store) == 0


def test_sessions_are_bounded_oldest_first() -> None:
    store = SessionStore(max_sessions=2, clock=Clock())
    first, _ = store.create()
    second, _ = store.create()
    third, _ = store.create()
    assert store.get(first) is None
    assert store.get(second) is not None and store.get(third) is not None


def test_session_ids_are_random_and_csrf_differs() -> None:
    store = SessionStore(clock=Clock())
    a, sa = store.create()
    b, sb = store.create()
    assert a != b and sa.csrf != sb.csrf and len(a) >= 40


def test_throttle_locks_an_address_for_the_window_only() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=100, clock=clock)
    for _ in range(2):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is not None
    assert throttle.retry_after("10.0.0.2") is None  # per address
    clock.now += 101
    assert throttle.retry_after("10.0.0.1") is None


def test_throttle_success_clears_failures() -> None:
    throttle = LoginThrottle(max_failures=2, clock=Clock())
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is None


def test_same_origin_checks_origin_then_referer() -> None:
    def req(**headers: str) -> object:
        return make_mocked_request("POST", "/x", headers={"Host": "127.0.0.1:8080", **headers})

    assert same_origin(req())  # type: ignore[arg-type]
    assert same_origin(req(Origin="http://127.0.0.1:8080"))  # type: ignore[arg-type]
    assert not same_origin(req(Origin="http://evil.example"))  # type: ignore[arg-type]
    assert not same_origin(req(Origin="null"))  # type: ignore[arg-type]
    assert not same_origin(req(Referer="http://evil.example/page"))  # type: ignore[arg-type]
    assert same_origin(req(Referer="http://127.0.0.1:8080/"))  # type: ignore[arg-type]


def test_same_origin_prefers_sec_fetch_site() -> None:
    def req(**headers: str) -> object:
        return make_mocked_request("POST", "/x", headers={"Host": "127.0.0.1:8080", **headers})

    # A form post under Referrer-Policy: no-referrer carries Origin: null but Sec-Fetch-Site: same-origin.
    assert same_origin(req(**{"Sec-Fetch-Site": "same-origin", "Origin": "null"}))  # type: ignore[arg-type]
    assert not same_origin(req(**{"Sec-Fetch-Site": "cross-site"}))  # type: ignore[arg-type]
    assert not same_origin(req(**{"Sec-Fetch-Site": "same-site"}))  # type: ignore[arg-type]
