"""The callback URLs of undelivered events, in full, in memory only.

The outbox stores a callback URL without its query string and fragment (where backends
put tokens; see ``agent.session.at_rest`` for what a session keeps at rest). The full URL
is remembered here while an event needs it; after a restart the stored form is used.
"""

from __future__ import annotations

from agent.redaction import strip_credentials

__all__ = ["CallbackUrls"]


class CallbackUrls:
    """Full callback URLs in memory, by slot and stored form, for the outbox's rows."""

    def __init__(self) -> None:
        self._full: dict[tuple[str, str], str] = {}

    def stored(self, slot_id: str, url: str) -> str:
        """The form of ``url`` to store; the full one is remembered here."""
        kept = strip_credentials(url)
        if kept != url:
            self._full[(slot_id, kept)] = url
        return kept

    def full(self, slot_id: str, stored: str) -> str:
        """The URL to POST to for a stored row (the stored form once memory is lost)."""
        return self._full.get((slot_id, stored), stored)

    def keep_only(self, slots: set[str]) -> None:
        """Forget the URLs of slots with no undelivered event left."""
        for key in [k for k in self._full if k[0] not in slots]:
            del self._full[key]
