"""Callback delivery: posts outbox events to each session's callback URL, in order per
session, a short retry round and then capped exponential backoff, forever.

One worker task per slot with pending events, so a slow or dead callback URL only delays
its own session. 2xx = delivered; 408, 429, 5xx, timeouts and connection errors = retry
(``Retry-After`` honoured); 401, 403 and 404 (a key being rotated, a route being deployed)
= retried for ``refused_rounds`` rounds of one POST each, then a dead letter; any other
4xx, any 3xx (redirects are never followed: they
would carry the API key and the face crop to another host, or turn the POST into a GET)
and a URL the allowlist no longer admits = dead letter, logged, counted and shown in status
at once. Failed rounds (an event's every attempt of a round failing, not a single POST)
and dead letters both feed the per-session auto-stop rule (N consecutive failures, or T
seconds without a success): a backend that refuses every event stops its sessions like one
that does not answer, while the defaults weather a 10-minute backend outage (the events
wait in the outbox and are delivered in order once it is back).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent.allowlist import CallbackUrlError, check_callback_url
from agent.config import CallbackConfig
from agent.events.event import Event
from agent.events.outbox import Outbox, OutboxEvent
from agent.protocol import StatusReason
from agent.redaction import log_safe, redact_text, redact_url

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 429}
# Refusals that are often passing (a rotated key not yet everywhere, a route not yet
# deployed): retried for [callback] refused_rounds rounds before the event is dead.
REFUSED_STATUS = {401, 403, 404}
SCAN_INTERVAL_S = 5.0
BODY_EXCERPT = 300


@dataclass(frozen=True)
class Outcome:
    """The result of one POST."""

    delivered: bool
    permanent: bool
    status: int | None
    error: str
    retry_after: float | None = None
    refused: bool = False  # 401/403/404: ends the round, retried for refused_rounds rounds


@dataclass
class SlotHealth:
    """Delivery health of one session, for the auto-stop rule."""

    consecutive_failures: int = 0
    failing_since: float | None = None
    triggered: bool = False
    rejected: bool = False  # the last failure was a dead letter (the backend refused)


@dataclass
class DeadLetterNews:
    """Dead letters since start, for status and metrics."""

    count: int = 0
    last_slot: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    last_at: float | None = None


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(cap, seconds))


class Delivery:
    """Owns the HTTP client and the per-slot delivery workers."""

    def __init__(
        self,
        outbox: Outbox,
        cfg: CallbackConfig,
        *,
        api_key: str | None,
        active_slots: Callable[[], Collection[str]] = lambda: (),
        on_unresponsive: Callable[[str, StatusReason], Coroutine[Any, Any, None]] | None = None,
        on_result: Callable[[str, float], None] | None = None,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.cfg = cfg
        self._api_key = api_key
        self._active_slots = active_slots
        self._on_unresponsive = on_unresponsive
        self._on_result = on_result
        self._on_crash = on_crash
        self._http: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._health: dict[str, SlotHealth] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._scanner: asyncio.Task[None] | None = None
        self.dead_letters = DeadLetterNews()

    async def start(self, *, scanner: bool = True) -> None:
        """Open the HTTP client and start delivering what is pending. With
        ``scanner=False`` the caller runs :meth:`scan_forever` itself (the agent's
        supervisor does, to restart it should it fail)."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            headers={"User-Agent": "edge-attendance-agent"},
        )
        if scanner:
            self._scanner = asyncio.create_task(self.scan_forever(), name="delivery-scanner")

    async def close(self) -> None:
        """Stop all workers (events in flight stay pending) and close the client."""
        tasks = [t for t in (self._scanner, *self._workers.values(), *self._side_tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def notify(self, slot_id: str) -> None:
        """A new event was committed for ``slot_id``: make sure a worker runs."""
        wake = self._wake.get(slot_id)
        if wake is not None:
            wake.set()
        self._ensure_worker(slot_id)

    def forget(self, slot_id: str) -> None:
        """Drop the slot's auto-stop counters (its session ended)."""
        self._health.pop(slot_id, None)

    def _ensure_worker(self, slot_id: str) -> None:
        task = self._workers.get(slot_id)
        if task is None or task.done():
            self._wake.setdefault(slot_id, asyncio.Event())
            self._workers[slot_id] = asyncio.create_task(
                self._worker(slot_id), name=f"delivery-{slot_id}"
            )

    async def scan_forever(self) -> None:
        """Start workers for every slot with pending events (those from before a restart,
        dead letters re-queued by `python -m agent outbox retry`, workers that crashed)
        and apply the auto-stop time rule; every few seconds until cancelled."""
        while True:
            for slot_id in await self.outbox.pending_slots():
                self._ensure_worker(slot_id)
            for slot_id, health in list(self._health.items()):
                self._maybe_stop(slot_id, health)  # the time rule fires between failures too
            await asyncio.sleep(min(SCAN_INTERVAL_S, max(0.5, self.cfg.autostop_seconds / 4)))

    async def _worker(self, slot_id: str) -> None:
        wake = self._wake[slot_id]
        try:
            while True:
                wake.clear()
                event = await self.outbox.next_for_slot(slot_id)
                if event is None:
                    return
                delay = event.next_attempt_at - time.time()
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    continue  # re-read: a wake may mean an earlier event was re-queued
                await self._deliver(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("DELIVERY_WORKER_CRASHED slot=%s (restarted by the scanner)", slot_id)
            if self._on_crash is not None:
                self._on_crash("delivery-worker", exc)
        finally:
            if self._workers.get(slot_id) is asyncio.current_task():
                del self._workers[slot_id]

    async def _deliver(self, event: OutboxEvent) -> None:
        """One round: up to ``attempts_per_round`` POSTs, then success, dead, or retry later."""
        attempts = event.attempts
        outcome = Outcome(False, False, None, "not attempted")
        for round_attempt in range(1, self.cfg.attempts_per_round + 1):
            attempts += 1
            started = time.perf_counter()
            outcome = await self._post(event)
            if self._on_result is not None:
                self._on_result(
                    "delivered" if outcome.delivered else "failed", time.perf_counter() - started
                )
            if outcome.delivered:
                await self.outbox.mark_delivered(event, outcome.status or 200, attempts)
                self._record_success(event.slot_id)
                if attempts > 1:
                    await self._backend_is_back(event)
                log.info(
                    "CALLBACK_DELIVERED slot=%s seq=%d event=%s type=%s attempts=%d",
                    event.slot_id,
                    event.seq,
                    event.event_id,
                    event.type,
                    attempts,
                )
                return
            if outcome.permanent:
                await self._dead_letter(event, attempts, outcome)
                return
            if outcome.refused:
                break  # the backend answered: asking again a second later tells nothing new
            log.warning(
                "CALLBACK_FAILED slot=%s seq=%d event=%s attempt=%d status=%s error=%s",
                log_safe(event.slot_id),
                event.seq,
                event.event_id,
                attempts,
                outcome.status,
                log_safe(outcome.error, 300),
            )
            if round_attempt < self.cfg.attempts_per_round:
                wait = self.cfg.first_retry_s * 2 ** (round_attempt - 1)
                await asyncio.sleep(max(wait, outcome.retry_after or 0.0))
        refused = event.refused_rounds + int(outcome.refused)
        if outcome.refused and refused >= self.cfg.refused_rounds:
            error = f"{outcome.error} (refused in {refused} round{'s' * (refused > 1)})"
            await self._dead_letter(event, attempts, replace(outcome, error=error))
            return
        rounds = max(1, attempts // self.cfg.attempts_per_round, refused)
        backoff = min(self.cfg.retry_max_s, self.cfg.first_retry_s * 4 * 2 ** (rounds - 1))
        backoff = max(backoff * random.uniform(0.75, 1.25), outcome.retry_after or 0.0)
        await self.outbox.mark_retry(
            event, attempts, time.time() + backoff, outcome.error, outcome.status, refused
        )
        log.warning(
            "CALLBACK_RETRY_LATER slot=%s seq=%d event=%s in=%.1fs attempts=%d",
            event.slot_id,
            event.seq,
            event.event_id,
            backoff,
            attempts,
        )
        # The whole round failed: one failure for auto-stop (a single POST is not one; a
        # backend restart fails several POSTs while every event is safe in the outbox). A
        # refused round counts as the backend rejecting, like the dead letter it may become.
        self._record_failure(event.slot_id, rejected=outcome.refused)

    async def _dead_letter(self, event: OutboxEvent, attempts: int, outcome: Outcome) -> None:
        """Keep a permanently refused event as a dead letter and say so everywhere at once:
        log, metric, status; it counts as a failure for the auto-stop rule."""
        await self.outbox.mark_dead(event, attempts, outcome.error, outcome.status)
        news = self.dead_letters
        news.count += 1
        news.last_slot, news.last_status = event.slot_id, outcome.status
        news.last_error, news.last_at = outcome.error, time.time()
        if self._on_result is not None:
            self._on_result("dead", 0.0)
        log.error(
            "CALLBACK_DEAD_LETTER slot=%s seq=%d event=%s type=%s status=%s error=%s "
            "(kept; re-send with `python -m agent outbox retry`)",
            event.slot_id,
            event.seq,
            event.event_id,
            event.type,
            outcome.status,
            log_safe(outcome.error, 300),
        )
        self._record_failure(event.slot_id, rejected=True)

    async def _post(self, event: OutboxEvent) -> Outcome:
        if self._http is None:
            return Outcome(False, False, None, "delivery is closed")
        try:
            # Checked again at delivery: a URL removed from the allowlist since the event
            # was stored (config changed, agent restarted) receives nothing more.
            check_callback_url(event.callback_url, self.cfg.allowed_urls)
        except CallbackUrlError as exc:
            return Outcome(False, True, None, f"callback URL {exc}: not sent")
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": event.event_id,
            "X-Event-Sequence": str(event.seq),
        }
        if self._api_key:
            headers["X-API-Key"] = self._api_key
        try:
            async with self._http.post(
                event.callback_url,
                data=json.dumps(event.body),
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return Outcome(True, False, status, "")
                if 300 <= status < 400:
                    target = redact_url(response.headers.get("Location", "(no Location)"))
                    return Outcome(
                        False,
                        True,
                        status,
                        f"HTTP {status} redirect to {target} refused: callbacks never follow "
                        "redirects; configure the final URL",
                    )
                excerpt = (await response.content.read(BODY_EXCERPT)).decode("utf-8", "replace")
                error = f"HTTP {status}: {excerpt}".strip()
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self.cfg.retry_max_s
                )
                if status in REFUSED_STATUS:
                    return Outcome(False, False, status, error, retry_after, refused=True)
                retryable = status in RETRYABLE_STATUS or status >= 500
                return Outcome(False, not retryable, status, error, retry_after)
        except aiohttp.InvalidURL as exc:
            return Outcome(
                False, True, None, redact_text(f"invalid callback URL: {exc}", limit=300)
            )
        except TimeoutError:
            return Outcome(False, False, None, f"timed out after {self.cfg.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return Outcome(
                False, False, None, redact_text(f"{type(exc).__name__}: {exc}", limit=300)
            )
        except (ValueError, UnicodeError) as exc:  # yarl/aiohttp on a URL they cannot use
            return Outcome(
                False, True, None, redact_text(f"invalid callback URL: {exc}", limit=300)
            )

    async def _backend_is_back(self, event: OutboxEvent) -> None:
        """A retried event got through: the backend is back, so other sessions' events for
        the same host stop waiting out their backoff (up to retry_max_s otherwise)."""
        parts = urlsplit(event.callback_url)
        origin = f"{parts.scheme}://{parts.netloc}/"
        for slot_id in await self.outbox.expedite(origin):
            if slot_id != event.slot_id:
                self.notify(slot_id)

    def _record_success(self, slot_id: str) -> None:
        health = self._health.get(slot_id)
        if health is not None:
            health.consecutive_failures = 0
            health.failing_since = None

    def _record_failure(self, slot_id: str, *, rejected: bool = False) -> None:
        if slot_id not in self._active_slots():
            return
        health = self._health.setdefault(slot_id, SlotHealth())
        health.rejected = rejected
        health.consecutive_failures += 1
        if health.failing_since is None:
            health.failing_since = time.time()
        self._maybe_stop(slot_id, health)

    def _maybe_stop(self, slot_id: str, health: SlotHealth) -> None:
        if health.triggered or health.failing_since is None or self._on_unresponsive is None:
            return
        by_count = 0 < self.cfg.autostop_failures <= health.consecutive_failures
        by_time = 0 < self.cfg.autostop_seconds <= time.time() - health.failing_since
        if by_count or by_time:
            health.triggered = True
            reason = (
                StatusReason.BACKEND_REJECTED
                if health.rejected
                else StatusReason.BACKEND_UNRESPONSIVE
            )
            log.error(
                "%s slot=%s failures=%d failing_for=%.0fs: stopping the session",
                reason,
                slot_id,
                health.consecutive_failures,
                time.time() - health.failing_since,
            )
            task = asyncio.create_task(
                self._on_unresponsive(slot_id, reason), name=f"autostop-{slot_id}"
            )
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)


class OutboxSink:
    """The production event sink: commit to the outbox, then wake the slot's worker."""

    def __init__(self, outbox: Outbox, delivery: Delivery) -> None:
        self.outbox = outbox
        self.delivery = delivery

    async def emit(self, event: Event, callback_url: str) -> None:
        """Store the event durably (raises OutboxFullError when it cannot) and schedule it."""
        await self.outbox.add(event, callback_url)
        self.delivery.notify(event.slot_id)

    async def emit_final(self, event: Event, callback_url: str, slot_id: str) -> None:
        """Store a session's STOPPED event and delete its saved row in one transaction
        (raises like :meth:`emit`, and then neither happened), and schedule the event."""
        await self.outbox.add(event, callback_url, forget_session=slot_id)
        self.delivery.notify(event.slot_id)
