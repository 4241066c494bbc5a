"""Which pack folder is the "newest": the one the agent saw last in its present form.

A folder's modification time says when its files were written, not when it arrived:
``cp -a`` and ``rsync -a`` keep the source's old times, so a pack copied that way would
never count as new. Instead the agent notes, per folder, a fingerprint of what it holds
(the folder's and its files' times and sizes) and the time it first saw the folder with
that fingerprint, after the copy settled (``[models] settle_s``). The newest pack is the
one seen last; folders first seen together (at the first start) are ordered by their
modification time. A folder whose files change (copied again, fixed in place, or just
``touch``-ed for a rollback) is seen anew, so it becomes the newest.

The sightings are kept in the state file (table ``pack_sightings``), so the order holds
across restarts.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.vision.modelpack import list_pack_dirs

if TYPE_CHECKING:  # the state file (only its methods are called; vision imports no events code)
    from agent.events.store import Store

Seen = tuple[str, float]  # (fingerprint, first seen)


def fingerprint(folder: Path) -> str:
    """What the folder holds, by times and sizes (blocking: stats its files)."""
    parts = [str(folder.stat().st_mtime_ns)]
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            stat = entry.stat()
            parts.append(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _load(store: Store) -> dict[str, Seen]:
    rows = store.query("select name, fingerprint, first_seen from pack_sightings")
    return {str(r["name"]): (str(r["fingerprint"]), float(r["first_seen"])) for r in rows}


def _save(store: Store, changed: dict[str, Seen], gone: set[str]) -> None:
    with store.write("record model pack sightings in") as db:
        for name, (print_, first_seen) in changed.items():
            db.execute(
                "insert or replace into pack_sightings (name, fingerprint, first_seen) "
                "values (?, ?, ?)",
                [name, print_, first_seen],
            )
        for name in gone:
            db.execute("delete from pack_sightings where name = ?", [name])


class PackSightings:
    """The order of the pack folders, newest first, with its memory in the state file
    (or in memory only, without a store)."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        self._seen: dict[str, Seen] | None = None

    async def newest_first(self, models_dir: Path) -> list[Path]:
        """Pack folders, the one seen last first; records what is new or changed. A
        folder removed while it is looked at is skipped. Raises OSError when ``models_dir``
        cannot be listed."""
        if self._seen is None:
            self._seen = await self._store.call(_load, self._store) if self._store else {}
        seen = self._seen
        now = time.time()
        changed: dict[str, Seen] = {}
        dated: list[tuple[float, float, Path]] = []
        folders = list_pack_dirs(models_dir)
        for folder in folders:
            try:
                print_, mtime = fingerprint(folder), folder.stat().st_mtime
            except OSError:  # a technician deleting an old pack while we look
                continue
            known = seen.get(folder.name)
            if known is None or known[0] != print_:
                known = changed[folder.name] = (print_, now)
            dated.append((known[1], mtime, folder))
        gone = set(seen) - {f.name for f in folders}
        seen.update(changed)
        for name in gone:
            del seen[name]
        if self._store is not None and (changed or gone):
            await self._store.call(_save, self._store, changed, gone)
        # sort() is stable with reverse=True, so equal keys keep the name order.
        return [f for _, _, f in sorted(dated, key=lambda d: (d[0], d[1]), reverse=True)]

    def fingerprint_of(self, folder: Path) -> str | None:
        """The fingerprint recorded for ``folder`` by the last ordering."""
        known = (self._seen or {}).get(folder.name)
        return known[0] if known else None
