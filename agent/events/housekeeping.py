"""Housekeeping: prune expired cached replies, old delivered events and the face crops of
old dead letters, and forget the callback URLs no undelivered event needs."""

from __future__ import annotations

import asyncio
import logging

from agent.events.outbox import Outbox
from agent.events.store import Store

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 3600.0


async def housekeeping(
    store: Store,
    outbox: Outbox,
    *,
    reply_cache_s: float,
    delivered_retention_s: float,
    dead_letter_crop_retention_s: float = 7 * 86_400.0,
) -> None:
    """Prune forever (a supervised task; a failure is logged and the task restarted).
    Runs hourly, or every half of the crop retention when that is shorter, so that a face
    crop outlives its retention by at most half of it."""
    interval = min(HOUSEKEEPING_INTERVAL_S, max(0.5, dead_letter_crop_retention_s / 2))
    while True:
        pruned = await store.call(store.prune_replies, reply_cache_s)
        delivered = await store.call(outbox.prune_delivered, delivered_retention_s)
        crops = await store.call(outbox.purge_dead_crops, dead_letter_crop_retention_s)
        outbox.forget_delivered_urls()
        if pruned or delivered or crops:
            log.info(
                "HOUSEKEEPING replies_pruned=%d delivered_pruned=%d dead_letter_crops_purged=%d",
                pruned,
                delivered,
                crops,
            )
        await asyncio.sleep(interval)
