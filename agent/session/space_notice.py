"""An embedding-space change, announced until the backend has adapted to it.

A model pack with another recognizer computes embeddings in another space: the school's
stored embeddings no longer match, and every new session sending them is refused with
EMBEDDING_MODEL_MISMATCH. The swap itself succeeds (the pack is sound), so nothing else
would say so. :class:`SpaceNotice` remembers the space in service in the state file (a
pack swapped while the agent was down counts too) and, from a change on, gives a warning
(status, the retained online message, the status page; logged once at the change) that
new sessions need new embeddings, until a session starts in the new space, or the old
space comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.events.store import Store, StoreError

log = logging.getLogger(__name__)

SERVING = "embedding_space"  # the space in service
CHANGED_FROM = "embedding_space_changed_from"  # set while the change is unadopted


class SpaceNotice:
    """The embedding space in service and an unadopted change of it (loop side)."""

    def __init__(self, store: Store, on_change: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_change = on_change
        self.current: str | None = None
        self.changed_from: str | None = None

    async def load(self) -> None:
        """Read what the state file remembers (at start, before the first pack loads)."""
        rows = await self._store.call(self._store.query, "select key, value from agent_facts")
        facts = {r["key"]: r["value"] for r in rows}
        self.current = facts.get(SERVING)
        self.changed_from = facts.get(CHANGED_FROM)

    async def serving(self, space: str) -> None:
        """A pack computing ``space`` went into service."""
        if space == self.current:
            return
        previous, self.current = self.current, space
        if self.changed_from == space:  # back to the space the embeddings are in
            self.changed_from = None
            log.info("EMBEDDING_SPACE_RESTORED space=%s", space)
        elif previous is not None and self.changed_from is None:
            self.changed_from = previous
            log.warning(
                "EMBEDDING_SPACE_CHANGED space=%s previous=%s: new sessions need embeddings "
                "made in the new space (embedding/generate)",
                space,
                previous,
            )
        await self._save()

    async def session_started(self, space: str) -> None:
        """A session started in ``space``: if it is the new one, the backend has new
        embeddings, and the notice ends."""
        if self.changed_from is None or space != self.current:
            return
        log.info("EMBEDDING_SPACE_ADOPTED space=%s previous=%s", space, self.changed_from)
        self.changed_from = None
        await self._save()

    def warning(self) -> str | None:
        """The warning while a change is unadopted, else None."""
        if self.changed_from is None:
            return None
        return (
            f"EMBEDDING_SPACE_CHANGED: the model pack now computes embeddings in space "
            f"{self.current} (was {self.changed_from}); new sessions need embeddings made in "
            "the new space (embedding/generate): ones from the old space are refused with "
            "EMBEDDING_MODEL_MISMATCH. Shown until a session starts in the new space."
        )

    async def _save(self) -> None:
        """Remember the state (logged when the state file refuses: the warning still
        shows until a restart)."""
        self._on_change()
        try:
            await self._store.call(self._write, self.current, self.changed_from)
        except StoreError as exc:
            log.error("EMBEDDING_SPACE_NOT_SAVED code=%s message=%s", exc.code, exc.message)

    def _write(self, current: str | None, changed_from: str | None) -> None:
        with self._store.write("remember the embedding space in") as db:
            for key, value in ((SERVING, current), (CHANGED_FROM, changed_from)):
                if value is None:
                    db.execute("delete from agent_facts where key = ?", [key])
                else:
                    db.execute(
                        "insert or replace into agent_facts (key, value) values (?, ?)",
                        [key, value],
                    )
