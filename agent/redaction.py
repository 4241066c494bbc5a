"""Making URLs and untrusted text safe to log.

Camera URLs carry ``user:password@`` and callback URLs carry tokens in their query
string; payload fields and exception messages can hold newlines or terminal escapes that
forge log lines. Everything here returns a printable, single-line string and never raises
(it runs on error paths, where a second exception would hide the first):

* :func:`redact_url`: a URL without its userinfo, query and fragment;
* :func:`redact_text`: free text (an exception message, a traceback) with every URL in it
  redacted and the given secrets masked;
* :func:`log_safe`: any value as a bounded, escaped single line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["log_safe", "redact_text", "redact_url", "strip_credentials"]

MASK = "***"
URL_LIMIT = 500  # a URL longer than this is not worth a log line
TEXT_LIMIT = 20_000  # tracebacks are long but must stay bounded

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside free text: a scheme, "://", then anything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
# Credentials some cameras take in the path (e.g. XMEye ".../user=admin_password=x_...").
_PATH_SECRET = re.compile(
    r"(?i)(?<![a-z0-9])(password|passwd|pwd|pass|token|secret|api_?key|key|auth|sig|signature)"
    r"=[^&;/_]*"
)
_PORT_TAIL = re.compile(r"(:\d*)?")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def redact_url(url: object) -> str:
    """``url`` without secrets, safe to log; never raises.

    ``user:password@`` becomes ``***@``, a query string ``?***`` and a fragment ``#***``
    (callback URLs carry tokens there), and ``password=``-style path parameters lose
    their values. The scheme, host, port (even an invalid one, such as 99999) and path are
    kept so the log still says which stream it was. Malformed URLs are redacted on a best
    effort basis (an unencoded ``/`` or ``?`` in a password still does not leak it); bytes
    are decoded; any other non-string becomes ``<not a url: TYPE>``.
    """
    if isinstance(url, bytes | bytearray):
        url = bytes(url).decode("utf-8", "replace")
    if not isinstance(url, str):
        return f"<not a url: {type(url).__name__}>"
    try:
        return _escape(_redact(url.strip()), URL_LIMIT)
    except Exception:  # a bug here must not turn a log line into a crash
        return "<invalid url>"


def strip_credentials(url: str) -> str:
    """``url`` as :func:`redact_url` shows it (credentials replaced by ``***``) but not
    escaped or shortened: the form of a URL that may be stored at rest. Never raises."""
    try:
        return _redact(url.strip())
    except Exception:  # a bug here must not leak the URL: store nothing of it
        return "<invalid url>"


def _redact(text: str) -> str:
    if not text:
        return "<empty url>"
    match = _SCHEME.match(text)
    prefix, rest = (text[: match.end()], text[match.end() :]) if match else ("", text)
    # RFC 3986 (and FFmpeg's av_url_split): the authority ends at the first / ? or #.
    end = _find_any(rest, "/?#")
    authority, remainder = rest[:end], rest[end:]
    path_end = _find_any(remainder, "?#")
    path, suffix = remainder[:path_end], remainder[path_end:]
    hidden_user = False
    if "@" in authority:
        hidden_user = True
        authority = authority.rpartition("@")[2]
    elif "@" in path:
        # An '@' in the path: most likely an unencoded '/' in the password, so everything
        # up to the last '@' is credentials (a genuine '@' in a camera path is rare).
        hidden_user = True
        after = path.rpartition("@")[2]
        slash = after.find("/")
        authority, path = (after, "") if slash < 0 else (after[:slash], after[slash:])
    elif "@" in suffix and not _looks_like_host(authority):
        # "user:pa?ss@host": the authority is really "user:pa"; hide it whole.
        authority = MASK
    query, _, fragment = suffix.partition("#")
    out = prefix + (MASK + "@" if hidden_user else "") + authority
    out += _PATH_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", path)
    if query[1:]:
        out += "?" + MASK
    if fragment:
        out += "#" + MASK
    return out


def _find_any(text: str, chars: str) -> int:
    """Index of the first of ``chars`` in ``text``, or ``len(text)``."""
    hits = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(hits) if hits else len(text)


def _looks_like_host(authority: str) -> bool:
    """True for ``host``, ``host:554`` or ``[v6]:554``: nothing there can be a password."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return False
        tail = authority[close + 1 :]
    else:
        colon = authority.find(":")
        tail = authority[colon:] if colon >= 0 else ""
    return _PORT_TAIL.fullmatch(tail) is not None


def redact_text(text: object, secrets: Iterable[str] = (), limit: int = TEXT_LIMIT) -> str:
    """Free text made safe to log: every URL in it redacted (see :func:`redact_url`),
    every non-empty string of ``secrets`` replaced by ``***``, and the result escaped and
    bounded like :func:`log_safe` (newlines are kept as ``\\n`` so a traceback stays one
    log record). Never raises."""
    try:
        raw = text if isinstance(text, str) else _as_text(text)
        for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
            raw = raw.replace(secret, MASK)
        raw = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), raw)
        return _escape(raw, limit)
    except Exception:
        return "<unprintable text>"


def log_safe(value: object, limit: int = 200) -> str:
    """A printable single-line form of untrusted ``value`` for a log line; never raises.

    ``\\n``, ``\\r`` and ``\\t`` are written as those escapes; every other unprintable
    character (C0/C1 controls such as ESC, Unicode line and paragraph separators, bidi
    overrides, lone surrogates) as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Output longer
    than ``limit`` characters is cut and ends with ``...[+N chars]`` (N counts the input
    characters not shown). Backslashes are left as they are.
    """
    try:
        return _escape(value if isinstance(value, str) else _as_text(value), limit)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _code_escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _escape(text: str, limit: int) -> str:
    """``text`` with unprintable characters escaped, cut to ``limit`` output characters."""
    limit = max(0, limit)
    pieces: list[str] = []
    used = 0
    for index, char in enumerate(text):
        if char.isprintable():
            piece = char
        elif char in _ESCAPES:
            piece = _ESCAPES[char]
        else:
            piece = _code_escape(ord(char))
        if used + len(piece) > limit:
            return "".join(pieces) + f"...[+{len(text) - index} chars]"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)


def url_secrets(url: str) -> list[str]:
    """The credentials inside a camera URL, raw and percent-decoded, so they can be masked
    in error text that might quote them (an exception message, a traceback)."""
    scheme_end = url.find("://")
    rest = url[scheme_end + 3 :] if scheme_end >= 0 else url
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    secrets = {userinfo, *userinfo.split(":", 1)[1:]}
    return [s for raw in secrets for s in {raw, unquote(raw)} if s]
