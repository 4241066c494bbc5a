"""agent.redaction: URLs and untrusted text made safe to log, as tables of inputs and the
exact output expected."""

from __future__ import annotations

import pytest

from agent.redaction import log_safe, redact_text, redact_url


class Unprintable:
    """An object whose ``str()`` raises, as a hostile payload value might."""

    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Userinfo, whatever it holds, becomes ***@; host, port and path stay.
        ("rtsp://admin:secret@192.0.2.1:554/s", "rtsp://***@192.0.2.1:554/s"),
        ("rtsp://admin@192.0.2.1/s", "rtsp://***@192.0.2.1/s"),
        ("rtsp://192.0.2.1/s", "rtsp://192.0.2.1/s"),
        ("rtsp://u:p%40ss@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsp://u:p@ss@host/x", "rtsp://***@host/x"),  # unencoded '@' in the password
        ("rtsp://u:p@[::1]:554/s", "rtsp://***@[::1]:554/s"),
        # Invalid ports are not secrets: kept (urlsplit().port raises on these).
        ("rtsp://user:pass@127.0.0.1:99999/x", "rtsp://***@127.0.0.1:99999/x"),
        ("rtsp://user:pass@host:abc/x", "rtsp://***@host:abc/x"),
        # Query strings and fragments carry tokens.
        ("https://cb.example/hook?token=abc", "https://cb.example/hook?***"),
        ("https://cb.example/hook?token=abc#frag", "https://cb.example/hook?***#***"),
        ("https://u:p@cb.example/h#t", "https://***@cb.example/h#***"),
        ("http://host/cb?email=a@b.com", "http://host/cb?***"),
        ("http://h/x?", "http://h/x"),
        # Credentials some cameras take in the path.
        (
            "rtsp://10.0.0.5/user=admin_password=tlJwpbo6_channel=1",
            "rtsp://10.0.0.5/user=admin_password=***_channel=1",
        ),
        # Malformed: unencoded / ? # in a password, broken IPv6; never raises, never leaks.
        ("rtsp://u:pa/ss@host/x", "rtsp://***@host/x"),
        ("rtsp://u:pa?ss@host/x", "rtsp://***?***"),
        ("rtsp://u:pa#ss@host", "rtsp://***#***"),
        ("rtsp://u:p@[::1/s", "rtsp://***@[::1/s"),
        ("//u:p@host/x", "***@host/x"),
        ("user:pass@host/x", "***@host/x"),
        # Not network URLs: unchanged.
        ("0", "0"),
        ("/dev/video0", "/dev/video0"),
        ("file:///tmp/x.mp4", "file:///tmp/x.mp4"),
        ("  rtsp://h/s  ", "rtsp://h/s"),
        # Control characters cannot forge log lines.
        ("rtsp://h/x\x1b[2J\u2028y", "rtsp://h/x\\x1b[2J\\u2028y"),
        # Non-strings and empties: placeholders.
        ("", "<empty url>"),
        (None, "<not a url: NoneType>"),
        (554, "<not a url: int>"),
        (b"rtsp://a:b@h/x", "rtsp://***@h/x"),
    ],
)
def test_redact_url(url: object, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_bounds_its_output() -> None:
    out = redact_url("rtsp://h/" + "a" * 5000)
    assert len(out) < 600 and out.endswith("chars]")


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("plain text", 200, "plain text"),
        ("line\nforged INFO COMMAND_OK", 200, "line\\nforged INFO COMMAND_OK"),
        ("a\rb\tc", 200, "a\\rb\\tc"),
        ("\x1b[31mred\x1b[0m", 200, "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 del\x7f c1\x85", 200, "nul\\x00 del\\x7f c1\\x85"),
        ("ls\u2028ps\u2029", 200, "ls\\u2028ps\\u2029"),
        ("bidi\u202etxt", 200, "bidi\\u202etxt"),
        ("surrogate\udc80", 200, "surrogate\\udc80"),
        ("caf\u00e9 \u5b66\u751f", 200, "caf\u00e9 \u5b66\u751f"),  # printable Unicode kept
        ("back\\slash", 200, "back\\slash"),
        ("x" * 20, 10, "xxxxxxxxxx...[+10 chars]"),
        ("\n" * 10, 5, "\\n\\n...[+8 chars]"),  # an escape is never cut in half
        ("abc", 0, "...[+3 chars]"),
        (b"bytes\n\xff", 200, "bytes\\n\\xff"),
        (42, 200, "42"),
        (None, 200, "None"),
        (Unprintable(), 200, "<unprintable Unprintable>"),
    ],
)
def test_log_safe(value: object, limit: int, expected: str) -> None:
    assert log_safe(value, limit) == expected


def test_log_safe_is_one_line_for_every_control_character() -> None:
    every = "".join(chr(c) for c in range(0x20)) + "\x7f\x85\u2028\u2029"
    out = log_safe(every, 10_000)
    assert out.isprintable() and "\n" not in out and "\r" not in out


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (
            "cannot open rtsp://admin:hunter2@10.0.0.1/x",
            (),
            "cannot open rtsp://***@10.0.0.1/x",
        ),
        ("POST https://cb/x?sig=abc failed", (), "POST https://cb/x?*** failed"),
        ("password hunter2 was refused", ("hunter2",), "password *** was refused"),
        ("a\nb", ("",), "a\\nb"),  # empty secrets are ignored
        (ValueError("bad rtsp://u:p@h/x"), (), "bad rtsp://***@h/x"),
    ],
)
def test_redact_text(text: object, secrets: tuple[str, ...], expected: str) -> None:
    assert redact_text(text, secrets) == expected
