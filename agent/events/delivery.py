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
and dead letters are recorded per running session in :class:`BackendHealth`, and reported
to a listener: delivery never stops a session, the session side decides what a failing
backend means (:mod:`agent.session.autostop`). Events wait in the outbox meanwhile and are
delivered in order once the backend is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from agent.allowlist import CallbackUrlError, check_callback_url
from agent.backoff import Backoff
from agent.config import CallbackConfig
from agent.events.outbox import Outbox, OutboxEvent
from agent.redaction import log_safe, redact_text, redact_url

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 429}
# Refusals that are often passing (a rotated key not yet everywhere, a route not yet
# deployed): retried for [callback] refused_rounds rounds before the event is dead.
REFUSED_STATUS = {401, 403, 404}
SCAN_INTERVAL_S = 5.0
BODY_EXCERPT = 300


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result of one POST."""

    error: str = ""
    status: int | None = None
    delivered: bool = False
    permanent: bool = False  # a dead letter at once (3xx, most 4xx, a URL not allowed)
    retry_after: float | None = None
    refused: bool = False  # 401/403/404: ends the round, retried for refused_rounds rounds


@dataclass(frozen=True)
class SlotHealth:
    """How one running session's deliveries went since its last success."""

    consecutive_failures: int = 0  # failed rounds and dead letters in a row
    failing_since: float | None = None  # wall time of the first of them; None: not failing
    rejected: bool = False  # the last of them was a refusal (dead letter, 401/403/404)


HealthListener = Callable[[str, SlotHealth | None], None]
"""Told each slot's new :class:`SlotHealth` as it is recorded; None once it is forgotten."""


class BackendHealth:
    """Delivery outcomes per running session, as delivery records them.

    Records only: what a failing backend means (stopping its sessions) is decided by the
    ``listener`` (:class:`agent.session.autostop.AutoStop`). Slots without a running
    session are not recorded (the STOPPED event of a session that is gone would leave a
    record nobody forgets).
    """

    def __init__(
        self,
        active_slots: Callable[[], Collection[str]] = lambda: (),
        listener: HealthListener | None = None,
    ) -> None:
        self._active_slots = active_slots
        self._listener = listener
        self._slots: dict[str, SlotHealth] = {}

    def get(self, slot_id: str) -> SlotHealth | None:
        """The slot's record, if it has one (a running session that had a failure)."""
        return self._slots.get(slot_id)

    def succeeded(self, slot_id: str) -> None:
        """An event of the slot was delivered: its failures in a row start over."""
        if slot_id in self._slots:
            self._set(slot_id, SlotHealth())

    def failed(self, slot_id: str, *, rejected: bool) -> None:
        """A round of one of the slot's events failed, or the event became a dead letter
        (``rejected``: the backend refused it rather than not answering)."""
        if slot_id not in self._active_slots():
            return
        old = self._slots.get(slot_id, SlotHealth())
        since = old.failing_since if old.failing_since is not None else time.time()
        self._set(slot_id, SlotHealth(old.consecutive_failures + 1, since, rejected))

    def forget(self, slot_id: str) -> None:
        """Drop the slot's record (its session ended)."""
        if self._slots.pop(slot_id, None) is not None and self._listener is not None:
            self._listener(slot_id, None)

    def _set(self, slot_id: str, health: SlotHealth) -> None:
        self._slots[slot_id] = health
        if self._listener is not None:
            self._listener(slot_id, health)


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
        on_health: HealthListener | None = None,
        on_result: Callable[[str, float], None] | None = None,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.cfg = cfg
        self._api_key = api_key
        self.health = BackendHealth(active_slots, on_health)
        self._on_result = on_result
        self._on_crash = on_crash
        self._http: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._scanner: asyncio.Task[None] | None = None
        self.dead_letters = DeadLetterNews()
        # Within a round: first_retry_s doubling, no jitter (a round is a few seconds).
        self._in_round = Backoff(first_s=cfg.first_retry_s, cap_s=math.inf, jitter=(1.0, 1.0))
        # Between rounds: from 4 x first_retry_s (after 1, 2 s in the round), doubling up
        # to retry_max_s, +-25 % so agents that failed together do not return together.
        self._between_rounds = Backoff(
            first_s=min(cfg.first_retry_s * 4, cfg.retry_max_s),
            cap_s=cfg.retry_max_s,
            jitter=(0.75, 1.25),
        )

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
        tasks = [t for t in (self._scanner, *self._workers.values()) if t]
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
        """Drop the slot's health record (its session ended)."""
        self.health.forget(slot_id)

    def _ensure_worker(self, slot_id: str) -> None:
        task = self._workers.get(slot_id)
        if task is None or task.done():
            self._wake.setdefault(slot_id, asyncio.Event())
            self._workers[slot_id] = asyncio.create_task(
                self._worker(slot_id), name=f"delivery-{slot_id}"
            )

    async def scan_forever(self) -> None:
        """Start workers for every slot with pending events (those from before a restart,
        dead letters re-queued by `python -m agent outbox retry`, workers that crashed);
        every few seconds until cancelled."""
        while True:
            for slot_id in await self.outbox.pending_slots():
                self._ensure_worker(slot_id)
            # The pace it had when the scan also applied the auto-stop time rule: a short
            # autostop_seconds still means a quick scan.
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
        outcome = Outcome(error="not attempted")
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
                self.health.succeeded(event.slot_id)
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
                wait = self._in_round.base(round_attempt - 1)
                await asyncio.sleep(max(wait, outcome.retry_after or 0.0))
        await self._round_failed(event, attempts, outcome)

    async def _round_failed(self, event: OutboxEvent, attempts: int, outcome: Outcome) -> None:
        """No POST of the round got through: a dead letter once refused too often, else
        the event waits out the backoff between rounds."""
        refused = event.refused_rounds + int(outcome.refused)
        if outcome.refused and refused >= self.cfg.refused_rounds:
            error = f"{outcome.error} (refused in {refused} round{'s' * (refused > 1)})"
            await self._dead_letter(event, attempts, replace(outcome, error=error))
            return
        rounds = max(1, attempts // self.cfg.attempts_per_round, refused)
        backoff = max(self._between_rounds.delay(rounds - 1), outcome.retry_after or 0.0)
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
        # The whole round failed: one failure of the slot (a single POST is not one; a
        # backend restart fails several POSTs while every event is safe in the outbox). A
        # refused round counts as the backend rejecting, like the dead letter it may become.
        self.health.failed(event.slot_id, rejected=outcome.refused)

    async def _dead_letter(self, event: OutboxEvent, attempts: int, outcome: Outcome) -> None:
        """Keep a permanently refused event as a dead letter and say so everywhere at once:
        log, metric, status; it counts as a (rejected) failure of the slot."""
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
        self.health.failed(event.slot_id, rejected=True)

    async def _post(self, event: OutboxEvent) -> Outcome:
        if self._http is None:
            return Outcome(error="delivery is closed")
        try:
            # Checked again at delivery: a URL removed from the allowlist since the event
            # was stored (config changed, agent restarted) receives nothing more.
            check_callback_url(event.callback_url, self.cfg.allowed_urls)
        except CallbackUrlError as exc:
            return Outcome(permanent=True, error=f"callback URL {exc}: not sent")
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
                    return Outcome(delivered=True, status=status)
                if 300 <= status < 400:
                    target = redact_url(response.headers.get("Location", "(no Location)"))
                    return Outcome(
                        permanent=True,
                        status=status,
                        error=f"HTTP {status} redirect to {target} refused: callbacks never "
                        "follow redirects; configure the final URL",
                    )
                excerpt = (await response.content.read(BODY_EXCERPT)).decode("utf-8", "replace")
                error = f"HTTP {status}: {excerpt}".strip()
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self.cfg.retry_max_s
                )
                if status in REFUSED_STATUS:
                    return Outcome(
                        status=status, error=error, retry_after=retry_after, refused=True
                    )
                retryable = status in RETRYABLE_STATUS or status >= 500
                return Outcome(
                    permanent=not retryable, status=status, error=error, retry_after=retry_after
                )
        except aiohttp.InvalidURL as exc:
            return Outcome(
                permanent=True, error=redact_text(f"invalid callback URL: {exc}", limit=300)
            )
        except TimeoutError:
            return Outcome(error=f"timed out after {self.cfg.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return Outcome(error=redact_text(f"{type(exc).__name__}: {exc}", limit=300))
        except (ValueError, UnicodeError) as exc:  # yarl/aiohttp on a URL they cannot use
            return Outcome(
                permanent=True, error=redact_text(f"invalid callback URL: {exc}", limit=300)
            )

    async def _backend_is_back(self, event: OutboxEvent) -> None:
        """A retried event got through: the backend is back, so other sessions' events for
        the same host stop waiting out their backoff (up to retry_max_s otherwise)."""
        parts = urlsplit(event.callback_url)
        origin = f"{parts.scheme}://{parts.netloc}/"
        for slot_id in await self.outbox.expedite(origin):
            if slot_id != event.slot_id:
                self.notify(slot_id)
