"""Which callback URLs the agent may send biometric results to (and the URL allowlist
rules the status page's camera test shares, with camera schemes and credentials allowed).

A callback URL is allowed when, after normalisation, it has the scheme, host and port of
an allowlisted URL and its path lies under that URL's path **by whole segments**
(``/cb`` allows ``/cb`` and ``/cb/x``, never ``/cb-evil``). URLs the HTTP client would
rewrite or that hide their target are refused outright rather than normalised and
trusted: user information (even an empty ``@``), dot segments (``/cb/../admin``, also
percent-encoded as ``%2e%2e``), encoded slashes or backslashes, control characters and
non-http(s) schemes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import SplitResult, unquote, urlsplit

from agent.errors import AgentError, ErrorCode

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Percent-encoded '/', '\' or '.' in a path: the client or the server may decode them
# into a different path than the one checked.
_ENCODED_SEPARATORS = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)


class CallbackUrlError(AgentError, ValueError):
    """The URL cannot be a callback URL; the message says why. Also a ``ValueError``, so
    a config validator that meets it reports a validation error."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.CALLBACK_URL_NOT_ALLOWED, reason)


def parse_url(
    url: str,
    *,
    ports: Mapping[str, int],
    allow_userinfo: bool,
    error: Callable[[str], AgentError],
) -> SplitResult:
    """Split and sanity-check a URL whose scheme must be one of ``ports``' keys; raises
    ``error(reason)`` for anything the rules above refuse."""
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise error("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise error(f"is not a valid URL ({exc})") from exc
    if parts.scheme not in ports:
        raise error(f"must start with {' or '.join(f'{s}://' for s in ports)}")
    if "@" in parts.netloc and not allow_userinfo:
        raise error("must not contain user information (user:password@)")
    if not parts.hostname:
        raise error("has no host")
    if "\\" in parts.path or _ENCODED_SEPARATORS.search(parts.path):
        raise error("must not contain backslashes or encoded '/', '\\' or '.'")
    segments = unquote(parts.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        raise error("must not contain '.' or '..' path segments")
    return parts


def _segments(path: str) -> list[str]:
    return [s for s in unquote(path).split("/") if s]


def check_under(
    url: str,
    allowed_urls: Iterable[str],
    *,
    ports: Mapping[str, int],
    allow_userinfo: bool,
    error: Callable[[str], AgentError],
    refusal: str,
) -> None:
    """Raise ``error`` unless ``url`` has the scheme, host and port of one of
    ``allowed_urls`` and lies under its path by whole segments (``refusal`` says so)."""

    def parse(text: str) -> SplitResult:
        return parse_url(text, ports=ports, allow_userinfo=allow_userinfo, error=error)

    target = parse(url)
    port = target.port or ports[target.scheme]
    path = _segments(target.path)
    for allowed in allowed_urls:
        try:
            rule = parse(allowed)
        except AgentError:
            continue  # config validation refuses these; never match on one
        prefix = _segments(rule.path)
        if (
            target.scheme == rule.scheme
            and (target.hostname or "").lower() == (rule.hostname or "").lower()
            and port == (rule.port or ports[rule.scheme])
            and path[: len(prefix)] == prefix
        ):
            return
    raise error(refusal)


def _parts(url: str) -> SplitResult:
    return parse_url(url, ports=_DEFAULT_PORTS, allow_userinfo=False, error=CallbackUrlError)


def check_callback_url(url: str, allowed_urls: Iterable[str]) -> None:
    """Raise :class:`CallbackUrlError` unless ``url`` is under one of ``allowed_urls``."""
    check_under(
        url,
        allowed_urls,
        ports=_DEFAULT_PORTS,
        allow_userinfo=False,
        error=CallbackUrlError,
        refusal="is not under any URL of the site's allowlist ([callback] allowed_urls)",
    )


def is_allowed(url: str, allowed_urls: Iterable[str]) -> bool:
    """Whether ``url`` passes :func:`check_callback_url`."""
    try:
        check_callback_url(url, allowed_urls)
    except CallbackUrlError:
        return False
    return True


def check_allowlist_entry(url: str) -> None:
    """Raise :class:`CallbackUrlError` if an ``allowed_urls`` entry is not usable."""
    _parts(url)
