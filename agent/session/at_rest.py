"""What of a session is kept at rest, in the state file, and what only in memory.

A session is saved so that it can resume after a restart, and its events so that they are
delivered after one. The state file gets the ``session/start`` command **without
credentials**: an inline camera URL's ``user:password@``, a callback URL's query string
and fragment (where backends put tokens) and ``password=``-style path parameters are
replaced by ``***`` (:func:`agent.redaction.strip_credentials`). The full command and the
full callback URLs are held in memory only, for as long as the session or its undelivered
events need them. The roster (names, codes, embeddings) is kept: a session cannot resume
without it; it is deleted with the session row (``secure_delete`` overwrites it).

Consequences after an agent restart (memory lost): a resumed session reopens an inline
camera URL without its credentials (the camera refuses it and is reported
``CAMERA_OPEN_FAILED`` / ``CAMERA_DISCONNECTED``; a registry camera's credentials come
from the config and are unaffected), and events are POSTed to the callback URL without its
query (use ``[callback] api_key``, sent as ``X-API-Key``, to authenticate callbacks).
"""

from __future__ import annotations

import logging
from typing import Any

from agent.protocol import SessionStart
from agent.redaction import MASK, strip_credentials

log = logging.getLogger(__name__)


def command_at_rest(command: SessionStart) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(stored, full)``: the command as JSON without credentials, and as sent (without
    the API key in both)."""
    full = command.model_dump(mode="json", by_alias=True, exclude={"api_key"})
    stored = dict(full)
    stored["callbackUrl"] = strip_credentials(full["callbackUrl"])
    stored["cameras"] = [
        {**camera, "rtspUrl": strip_credentials(camera["rtspUrl"])}
        if camera.get("rtspUrl")
        else camera
        for camera in full["cameras"]
    ]
    return stored, full


class SessionCommands:
    """Full ``session/start`` commands in memory, by slot, while the state file holds
    them without credentials."""

    def __init__(self) -> None:
        self._full: dict[str, dict[str, Any]] = {}

    def save(self, command: SessionStart) -> dict[str, Any]:
        """What to store for ``command``; its credentials stay here, in memory."""
        stored, full = command_at_rest(command)
        if stored != full:
            self._full[command.slot_id] = full
        return stored

    def restore(self, slot_id: str, stored: Any) -> SessionStart:
        """The command to resume ``slot_id`` with: the full one while this process holds
        it, else the stored one, whose withheld credentials are logged (once per resume).
        Raises ValueError (pydantic's) for an unreadable row."""
        full = self._full.get(slot_id)
        if full is not None:
            return SessionStart.model_validate(full)
        command = SessionStart.model_validate(stored)
        withheld = [c.id for c in command.cameras if c.rtsp_url and MASK in c.rtsp_url]
        if withheld or MASK in command.callback_url:
            log.warning(
                "SESSION_RESUMED_WITHOUT_CREDENTIALS slot=%s cameras=%s callback=%s "
                "(credentials are never stored; send session/start again to restore them)",
                slot_id,
                ",".join(withheld) or "-",
                "withheld" if MASK in command.callback_url else "complete",
            )
        return command

    def forget(self, slot_id: str) -> None:
        """Drop the slot's credentials (its row is gone)."""
        self._full.pop(slot_id, None)
