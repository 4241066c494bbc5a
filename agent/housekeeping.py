"""Housekeeping: prune expired cached replies and old delivered events, once an hour."""

from __future__ import annotations

import asyncio
import logging

from agent.outbox import Outbox
from agent.store import Store

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 3600.0


async def housekeeping(
    store: Store, outbox: Outbox, *, reply_cache_s: float, delivered_retention_s: float
) -> None:
    """Prune forever (a supervised task; a failure is logged and the task restarted)."""
    while True:
        pruned = await store.run(store.prune_replies, reply_cache_s)
        delivered = await store.run(outbox.prune_delivered, delivered_retention_s)
        if pruned or delivered:
            log.info("HOUSEKEEPING replies_pruned=%d delivered_pruned=%d", pruned, delivered)
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
