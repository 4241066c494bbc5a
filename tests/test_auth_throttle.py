"""The page's wrong-password throttle on its own: the wait grows, a right password clears
it, and a flood of other addresses cannot wipe a guesser's record."""

from __future__ import annotations

import time

import pytest

from agent.session.limits import camera_identity, same_camera
from agent.transport.auth_throttle import PasswordThrottle


def test_the_wait_doubles_after_the_allowed_tries_and_a_right_password_clears_it() -> None:
    throttle = PasswordThrottle(allowed=3, max_wait_s=4.0)
    assert [throttle.failed("a") for _ in range(2)] == [False, False]
    assert throttle.wait_s("a") == 0.0
    assert throttle.failed("a") is True  # the limit: logged once
    assert 0.9 < throttle.wait_s("a") <= 1.0
    for expected in (2.0, 4.0, 4.0):  # doubling, capped
        throttle.failed("a")
        assert expected - 0.1 < throttle.wait_s("a") <= expected
    assert throttle.wait_s("b") == 0.0  # per address
    throttle.succeeded("a")
    assert throttle.wait_s("a") == 0.0


def test_records_are_forgotten_after_a_quiet_time(monkeypatch: pytest.MonkeyPatch) -> None:
    throttle = PasswordThrottle(allowed=1, forget_s=10.0)
    throttle.failed("a")
    assert throttle.wait_s("a") > 0
    later = time.monotonic() + 11.0
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert throttle.wait_s("a") == 0.0
    assert throttle.failed("a") is True  # counting starts afresh


def test_a_flood_of_addresses_does_not_wipe_an_active_guesser() -> None:
    throttle = PasswordThrottle(allowed=2, max_addresses=100)
    for i in range(500):
        throttle.failed("guesser")  # keeps guessing between the flood's addresses
        throttle.failed(f"10.0.{i // 250}.{i % 250}")
    assert throttle.wait_s("guesser") > 0
    assert throttle.wait_s("10.0.0.0") == 0.0  # the least recent are forgotten


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("rtsp://localhost/x", "rtsp://127.0.0.1:554/x", True),
        ("rtsp://u:p@CAM.local/x", "rtsp://cam.local/x", True),
        ("rtsp://[::ffff:10.0.0.5]/x", "rtsp://10.0.0.5/x", True),
        ("http://10.0.0.5/x", "http://10.0.0.5:80/x", True),
        ("rtsp://10.0.0.5/x", "rtsp://10.0.0.5/y", False),
        ("rtsp://10.0.0.5:8554/x", "rtsp://10.0.0.5/x", False),
        ("rtsp://10.0.0.5/x?ch=1", "rtsp://10.0.0.5/x?ch=2", False),
    ],
)
def test_one_camera_however_its_url_is_spelled(a: str, b: str, same: bool) -> None:
    assert same_camera(a, b) is same, (camera_identity(a), camera_identity(b))
