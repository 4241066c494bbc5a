"""Benchmark: the durable outbox and callback delivery (``agent.events.outbox``,
``agent.events.delivery``).

Everything runs against a real SQLite state file (``agent.events.store.Store``: WAL journal,
``synchronous=FULL``) in a fresh temporary directory on local disk, and a real aiohttp backend
on 127.0.0.1 that answers every POST with 200 and records, per request, the event id, the
``X-Event-Sequence`` header and the time it arrived. By default the backend runs in a
subprocess (``--server subprocess``) so that, like a real backend, it does not share the
agent's event loop and CPU; ``--server inprocess`` runs it in the agent's own event loop,
which slows delivery because the loop then also parses every request. Arrival times are
``time.monotonic()`` in both processes (CLOCK_MONOTONIC on Linux, one clock per machine).

What is measured:

1. **Durable enqueue**: ``Outbox.add(event, url)`` alone (no delivery running), N events
   (``--enqueue-events``, 2,000) spread round-robin over 1 and over 10 slots; every call is
   one committed transaction (sequence number + row), i.e. one WAL fsync with
   ``synchronous=FULL``. Reported: events/s over the whole run and the per-call latency
   (p50/p95/p99). For reference only, the same run with ``PRAGMA synchronous=NORMAL`` (not
   what the agent uses: it may lose the last commits on power loss) shows what the fsync costs.
2. **Delivery, backend healthy**: a ``Delivery`` with the production defaults of
   ``CallbackConfig`` and an ``OutboxSink``; N events (``--delivery-events``, 2,000) over 10
   slots. *Burst*: emitted back to back (``await asyncio.sleep(0)`` after each emit, so the
   delivery workers get the loop between emits as they would in the agent), timed from the
   first emit until the outbox has marked every event delivered; latency = emit -> the backend
   receiving the POST. *Slow backend*: the same burst with the backend taking ``--slow-ms``
   (20) ms to answer each POST, which shows the cost of one request in flight per slot.
   *Paced*: ``--paced-events`` (1,000) at ``--paced-rate`` (100/s), the latency of one event
   when the pipeline is not saturated.
3. **Drain after an outage**: the backend is down (nothing listening on its port: connection
   refused) while ``--outage-events`` (10,000) events over 20 slots are emitted (the workers
   keep failing and backing off meanwhile; that enqueue time is reported, with the emit latency
   of the first and last 1,000 events), then the backend starts listening and the time until
   every event is marked delivered is the drain time. ``CallbackConfig`` here uses short
   delays (``first_retry_s=0.05``, ``retry_max_s=1.0``), so each slot's worker retries at most
   ~1.25 s (cap plus 25 % jitter) after the backend returns; with the production
   ``retry_max_s=300`` that wait is up to ~375 s.
4. **Checks** in scenarios 2 and 3: every emitted event id reached the backend (lost = ids
   never answered 200), duplicates (POSTs of an id already received), per-slot order (the
   first arrival of each id has an increasing ``X-Event-Sequence`` per slot), and the outbox
   rows (all ``delivered``, none ``pending`` or ``dead``). Scenario 1 checks the row count.
5. **Outbox size probe** (``--probe-rows``, 100,000 = the default ``max_pending_events``;
   0 skips it): that many rows are bulk-inserted in one transaction, once as ``delivered``
   (what a busy site keeps for ``delivered_retention_s``, one day by default) and once as
   ``pending`` (a long outage), then ``Outbox.add`` (200 calls, after 20 warm-up calls),
   ``Outbox.count_undelivered`` and ``Outbox.pending_slots`` are timed, and, to show what the
   limit check costs, ``add`` once more with ``count_undelivered`` stubbed out (a subclass
   in this script; the agent's code is not changed).

Run from the project root::

    .venv/bin/python bench/outbox_throughput.py [--server subprocess|inprocess]
        [--slow-ms 20] [--probe-rows 100000] [--json results.json] [--log-level ERROR]

The markdown table goes to stdout; ``--json`` also writes the raw results (per-event
latencies included). Agent logs are silenced below ``--log-level`` (ERROR by default: the
outage would otherwise log two warnings per failed POST).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

SCRIPT = Path(__file__).resolve()
PROJECT_ROOT = SCRIPT.parents[1]
if importlib.util.find_spec("agent") is None:  # run from a checkout without installing
    sys.path.insert(0, str(PROJECT_ROOT))

from agent.config import CallbackConfig  # noqa: E402
from agent.devkit.ports import free_port  # noqa: E402
from agent.events.delivery import Delivery  # noqa: E402
from agent.events.event import Event, EventFactory  # noqa: E402
from agent.events.outbox import EventState, Outbox, OutboxEvent  # noqa: E402
from agent.events.sink import OutboxSink  # noqa: E402
from agent.events.store import Store  # noqa: E402
from agent.protocol import SessionStatus  # noqa: E402

MAX_PENDING = 100_000  # the production default of callback.max_pending_events
STREAM_LIMIT = 64 * 1024 * 1024  # one JSON line with every arrival from the subprocess


# The backend -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One POST as the backend received it."""

    event_id: str
    slot_id: str
    seq: int
    at: float  # time.monotonic() when the handler read the body


class Receiver:
    """An aiohttp backend on 127.0.0.1 that answers 200 and records every POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[Arrival] = []
        self.delay_s = 0.0  # how long each answer takes (a slower, farther backend)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.arrivals.append(
            Arrival(
                body["eventId"],
                body["slotId"],
                int(request.headers["X-Event-Sequence"]),
                time.monotonic(),
            )
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({"ok": True})

    async def listen(self) -> None:
        """Start accepting connections."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening (connections are refused afterwards)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def take(self) -> list[Arrival]:
        """The arrivals so far; the record starts empty again."""
        arrivals, self.arrivals = self.arrivals, []
        return arrivals


class Backend(Protocol):
    """What a scenario needs from the backend, wherever it runs."""

    port: int
    kind: str

    async def listen(self) -> None:
        """Start accepting connections."""

    async def stop(self) -> None:
        """Stop listening."""

    async def take(self) -> list[Arrival]:
        """Arrivals since the last take."""

    async def set_delay(self, seconds: float) -> None:
        """Make every answer take ``seconds``."""

    async def close(self) -> None:
        """Stop and release everything."""


class InProcessBackend:
    """The receiver in the agent's own event loop."""

    kind = "inprocess"

    def __init__(self, port: int) -> None:
        self.port = port
        self._receiver = Receiver(port)

    async def listen(self) -> None:
        """Start accepting connections."""
        await self._receiver.listen()

    async def stop(self) -> None:
        """Stop listening."""
        await self._receiver.stop()

    async def take(self) -> list[Arrival]:
        """Arrivals since the last take."""
        return self._receiver.take()

    async def set_delay(self, seconds: float) -> None:
        """Make every answer take ``seconds``."""
        self._receiver.delay_s = seconds

    async def close(self) -> None:
        """Stop listening."""
        await self._receiver.stop()


class SubprocessBackend:
    """The receiver in a child process (this script with ``--serve PORT``), driven by one
    command per line on its stdin (listen / stop / take / quit), one reply line each."""

    kind = "subprocess"

    def __init__(self, port: int, proc: asyncio.subprocess.Process) -> None:
        self.port = port
        self._proc = proc

    @classmethod
    async def spawn(cls, port: int) -> SubprocessBackend:
        """Start the child and wait until it is ready (not yet listening)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--serve",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=STREAM_LIMIT,
        )
        backend = cls(port, proc)
        await backend._reply()  # "ready"
        return backend

    async def _reply(self) -> str:
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the backend subprocess exited")
        return line.decode()

    async def _command(self, command: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{command}\n".encode())
        await self._proc.stdin.drain()
        return await self._reply()

    async def listen(self) -> None:
        """Start accepting connections."""
        await self._command("listen")

    async def stop(self) -> None:
        """Stop listening."""
        await self._command("stop")

    async def take(self) -> list[Arrival]:
        """Arrivals since the last take."""
        rows = json.loads(await self._command("take"))
        return [Arrival(str(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in rows]

    async def set_delay(self, seconds: float) -> None:
        """Make every answer take ``seconds``."""
        await self._command(f"delay {seconds!r}")

    async def close(self) -> None:
        """Ask the child to quit and wait for it."""
        if self._proc.returncode is None:
            await self._command("quit")
            await self._proc.wait()


async def serve(port: int) -> None:
    """Child side of :class:`SubprocessBackend`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    receiver = Receiver(port)

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    reply("ready")
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "listen":
            await receiver.listen()
            reply("ok")
        elif command == "stop":
            await receiver.stop()
            reply("ok")
        elif command == "take":
            reply(json.dumps([[a.event_id, a.slot_id, a.seq, a.at] for a in receiver.take()]))
        elif command.startswith("delay "):
            receiver.delay_s = float(command.split()[1])
            reply("ok")
        elif command == "quit":
            reply("ok")
            break
        else:
            reply(f"unknown command {command!r}")
    await receiver.stop()


async def make_backend(kind: str) -> Backend:
    """A backend of the requested kind on a fresh port, not listening yet."""
    port = free_port()
    if kind == "inprocess":
        return InProcessBackend(port)
    return await SubprocessBackend.spawn(port)


# The agent side ----------------------------------------------------------------------------


class CountingOutbox(Outbox):
    """The real outbox, plus the time each event was first marked delivered and an asyncio
    event set once ``target`` events are delivered (so the benchmark need not poll)."""

    def __init__(self, store: Store, *, max_pending: int) -> None:
        super().__init__(store, max_pending=max_pending)
        self.delivered_at: dict[str, float] = {}
        self.target = 0
        self.all_delivered = asyncio.Event()

    async def mark_delivered(self, event: OutboxEvent, status_code: int, attempts: int) -> None:
        """Record the delivery (as the agent does), then note when."""
        await super().mark_delivered(event, status_code, attempts)
        self.delivered_at.setdefault(event.event_id, time.monotonic())
        if self.target and len(self.delivered_at) >= self.target:
            self.all_delivered.set()


class UncountedOutbox(Outbox):
    """The outbox without its limit check, only to show what that check costs (size probe)."""

    def count_undelivered(self) -> int:
        """Pretend the outbox is empty (no query)."""
        return 0


def build_events(n: int, slots: int, prefix: str) -> list[Event]:
    """``n`` SESSION_STATUS events, round-robin over ``slots`` slot ids."""
    factory = EventFactory("site-1", "Asia/Ho_Chi_Minh")
    return [
        factory.status(f"{prefix}-{i % slots}", SessionStatus.STARTED, message=f"#{i}")
        for i in range(n)
    ]


def state_counts(store: Store) -> dict[str, int]:
    """Rows per outbox state."""
    counts = {s.value: 0 for s in EventState}
    for row in store.read("select state, count(*) as n from events group by state"):
        counts[str(row["state"])] = int(row["n"])
    return counts


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` (inclusive method); nan when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


@dataclass
class Result:
    """One row of the report."""

    scenario: str
    label: str
    events: int
    slots: int
    seconds: float
    latency: str  # what the latency columns measure
    latencies_ms: list[float] = field(default_factory=list)
    lost: int | None = None
    duplicates: int | None = None
    in_order: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second over the timed span."""
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Everything but the raw latencies, plus the rate and percentiles."""
        data = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        data["events_per_s"] = self.rate
        for q in (50, 95, 99):
            data[f"p{q}_ms"] = pct(self.latencies_ms, q)
        data["max_ms"] = max(self.latencies_ms, default=float("nan"))
        return data


def check_arrivals(
    events: Sequence[Event], arrivals: Sequence[Arrival], store: Store
) -> dict[str, Any]:
    """Lost ids, duplicates, per-slot order, and the outbox's final row states."""
    expected = {e.event_id for e in events}
    first: dict[str, Arrival] = {}
    for arrival in sorted(arrivals, key=lambda a: a.at):
        first.setdefault(arrival.event_id, arrival)
    by_slot: dict[str, list[int]] = {}
    for arrival in sorted(first.values(), key=lambda a: a.at):
        by_slot.setdefault(arrival.slot_id, []).append(arrival.seq)
    in_order = all(all(a < b for a, b in itertools.pairwise(s)) for s in by_slot.values())
    return {
        "lost": len(expected - first.keys()),
        "unexpected": len(first.keys() - expected),
        "duplicates": len(arrivals) - len(first),
        "in_order": in_order,
        "states": state_counts(store),
        "first": first,
    }


async def emit_all(
    sink: OutboxSink, events: Sequence[Event], url: str, rate: float | None = None
) -> tuple[dict[str, float], list[float]]:
    """Emit every event (yielding to the loop after each; paced when ``rate`` is given).

    Returns the emit time of each event id and the duration of each emit call in ms."""
    emitted: dict[str, float] = {}
    durations: list[float] = []
    start = time.monotonic()
    for i, event in enumerate(events):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        before = time.monotonic()
        await sink.emit(event, url)
        after = time.monotonic()
        emitted[event.event_id] = before
        durations.append((after - before) * 1e3)
        await asyncio.sleep(0)
    return emitted, durations


# Scenarios ---------------------------------------------------------------------------------


def bench_enqueue(root: Path, n: int, slots: int, synchronous: str) -> Result:
    """Scenario 1: ``Outbox.add`` back to back, no delivery."""
    store = Store(root / f"enqueue-{slots}-{synchronous.lower()}")
    loop = asyncio.new_event_loop()
    try:
        if synchronous != "FULL":
            store.db.execute(f"PRAGMA synchronous={synchronous}")
        outbox = Outbox(store, max_pending=MAX_PENDING)
        events = build_events(n, slots, "slot")
        url = "http://127.0.0.1:9/callback"
        latencies: list[float] = []
        start = time.perf_counter()
        for event in events:
            before = time.perf_counter()
            loop.run_until_complete(outbox.add(event, url))
            latencies.append((time.perf_counter() - before) * 1e3)
        seconds = time.perf_counter() - start
        stored = state_counts(store)["pending"]
    finally:
        loop.close()
        store.close()
    label = f"`Outbox.add`, {slots} slot{'s' if slots > 1 else ''}"
    if synchronous != "FULL":
        label += f" (synchronous={synchronous}, reference only)"
    return Result(
        "1 enqueue",
        label,
        n,
        slots,
        seconds,
        "per add",
        latencies,
        lost=n - stored,
    )


async def bench_healthy(
    root: Path, backend: Backend, n: int, slots: int, rate: float | None, delay_ms: float = 0
) -> Result:
    """Scenario 2: emit through OutboxSink to a healthy backend, until all are delivered."""
    name = ("paced" if rate else "burst") + (f"-slow{delay_ms:g}" if delay_ms else "")
    store = Store(root / f"healthy-{name}")
    outbox = CountingOutbox(store, max_pending=MAX_PENDING)
    outbox.target = n
    url = f"http://127.0.0.1:{backend.port}/callback"
    delivery = Delivery(
        outbox, CallbackConfig(allowed_urls=(f"http://127.0.0.1:{backend.port}/",)), api_key="k"
    )
    events = build_events(n, slots, f"{name}")
    await backend.set_delay(delay_ms / 1e3)
    await backend.listen()
    await delivery.start()
    try:
        start = time.monotonic()
        emitted, emit_ms = await emit_all(OutboxSink(outbox, delivery), events, url, rate)
        enqueued = time.monotonic() - start
        async with asyncio.timeout(120):
            await outbox.all_delivered.wait()
        seconds = time.monotonic() - start
    finally:
        await delivery.close()
        arrivals = await backend.take()
        await backend.stop()
        await backend.set_delay(0)
    try:
        check = check_arrivals(events, arrivals, store)
    finally:
        store.close()
    first: dict[str, Arrival] = check.pop("first")
    latencies = [(first[i].at - t) * 1e3 for i, t in emitted.items() if i in first]
    label = (
        f"healthy, paced {rate:g} events/s: emit -> all delivered"
        if rate
        else "healthy, burst: emit -> all delivered"
    )
    if delay_ms:
        label = label.replace("healthy", f"backend answers in {delay_ms:g} ms")
    return Result(
        "2 delivery",
        label,
        n,
        slots,
        seconds,
        "emit -> backend received",
        latencies,
        lost=check["lost"],
        duplicates=check["duplicates"],
        in_order=check["in_order"],
        extra={
            "enqueue_s": enqueued,
            "emit_p50_ms": pct(emit_ms, 50),
            "emit_p99_ms": pct(emit_ms, 99),
            "unexpected": check["unexpected"],
            "states": check["states"],
            "emit_to_marked_delivered_p50_ms": pct(
                [(outbox.delivered_at[i] - t) * 1e3 for i, t in emitted.items()], 50
            ),
        },
    )


async def bench_outage(root: Path, backend: Backend, n: int, slots: int) -> list[Result]:
    """Scenario 3: enqueue with the backend down, then time the drain once it is back."""
    store = Store(root / "outage")
    outbox = CountingOutbox(store, max_pending=MAX_PENDING)
    outbox.target = n
    url = f"http://127.0.0.1:{backend.port}/callback"
    cfg = CallbackConfig(
        allowed_urls=(f"http://127.0.0.1:{backend.port}/",),
        timeout_s=2.0,
        first_retry_s=0.05,
        retry_max_s=1.0,
    )
    failed: list[float] = []

    def on_result(result: str, _seconds: float) -> None:
        if result == "failed":
            failed.append(time.monotonic())

    delivery = Delivery(outbox, cfg, api_key="k", on_result=on_result)
    events = build_events(n, slots, "outage")
    await delivery.start()  # the backend is not listening: connection refused
    try:
        start = time.monotonic()
        _, emit_ms = await emit_all(OutboxSink(outbox, delivery), events, url)
        enqueue_s = time.monotonic() - start
        pending_before = state_counts(store)
        failed_during_outage = len(failed)
        await backend.listen()
        back = time.monotonic()
        async with asyncio.timeout(300):
            await outbox.all_delivered.wait()
        drain_s = time.monotonic() - back
    finally:
        await delivery.close()
        arrivals = await backend.take()
        await backend.stop()
    try:
        check = check_arrivals(events, arrivals, store)
    finally:
        store.close()
    first: dict[str, Arrival] = check.pop("first")
    first_ok = min((a.at for a in first.values()), default=float("nan")) - back
    # Per slot: how long after the backend returned its worker delivered its first event.
    slot_start: dict[str, float] = {}
    for arrival in first.values():
        slot_start[arrival.slot_id] = min(
            slot_start.get(arrival.slot_id, float("inf")), arrival.at - back
        )
    last_slot_start = max(slot_start.values(), default=float("nan"))
    k = min(1000, n)
    enqueue = Result(
        "3 outage",
        "backend down: emit (add + notify)",
        n,
        slots,
        enqueue_s,
        "per emit",
        emit_ms,
        lost=n - pending_before["pending"],
        extra={
            "emit_p50_first_1000_ms": pct(emit_ms[:k], 50),
            "emit_p50_last_1000_ms": pct(emit_ms[-k:], 50),
            "failed_posts_during_outage": failed_during_outage,
            "states_before_drain": pending_before,
        },
    )
    drain = Result(
        "3 outage",
        "backend back: drain until all delivered",
        n,
        slots,
        drain_s,
        "-",
        [],
        lost=check["lost"],
        duplicates=check["duplicates"],
        in_order=check["in_order"],
        extra={
            "first_delivery_after_s": first_ok,
            "last_slot_first_delivery_after_s": last_slot_start,
            "rate_after_first_delivery": n / (drain_s - first_ok) if drain_s > first_ok else None,
            "failed_posts_total": len(failed),
            "unexpected": check["unexpected"],
            "states": check["states"],
        },
    )
    return [enqueue, drain]


def bench_size_probe(root: Path, rows: int, state: EventState, adds: int = 200) -> Result:
    """Scenario 5: add / count_undelivered / pending_slots with ``rows`` rows in ``state``."""
    store = Store(root / f"probe-{state.value}")
    loop = asyncio.new_event_loop()
    try:
        outbox = Outbox(store, max_pending=rows + adds + 100)
        template = build_events(1, 1, "tpl")[0].model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        now = time.time()
        delivered_at = now if state is EventState.DELIVERED else None
        with store.write():
            store.db.conn.executemany(
                "insert into events (event_id, slot_id, seq, type, body, callback_url, "
                "created_at, attempts, next_attempt_at, state, delivered_at) "
                "values (?,?,?,?,?,?,?,0,?,?,?)",
                (
                    (
                        str(uuid.uuid4()),
                        f"bulk-{i % 20}",
                        i // 20 + 1,
                        "SESSION_STATUS",
                        json.dumps({**template, "slotId": f"bulk-{i % 20}"}),
                        "http://127.0.0.1:9/callback",
                        now,
                        now,
                        state.value,
                        delivered_at,
                    )
                    for i in range(rows)
                ),
            )
        url = "http://127.0.0.1:9/callback"
        for event in build_events(20, 10, "warm"):  # the first commit checkpoints the WAL
            loop.run_until_complete(outbox.add(event, url))
        timings: dict[str, list[float]] = {"count_undelivered": [], "pending_slots": []}
        for _ in range(5):
            for name, call in (
                ("count_undelivered", outbox.count_undelivered),
                ("pending_slots", lambda: loop.run_until_complete(outbox.pending_slots())),
            ):
                before = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - before) * 1e3)
        latencies: list[float] = []
        start = time.perf_counter()
        for event in build_events(adds, 10, "probe"):
            before = time.perf_counter()
            loop.run_until_complete(outbox.add(event, url))
            latencies.append((time.perf_counter() - before) * 1e3)
        seconds = time.perf_counter() - start
        uncounted = UncountedOutbox(store, max_pending=outbox.max_pending)
        without_count: list[float] = []
        for event in build_events(adds, 10, "nocount"):
            before = time.perf_counter()
            loop.run_until_complete(uncounted.add(event, url))
            without_count.append((time.perf_counter() - before) * 1e3)
    finally:
        loop.close()
        store.close()
    what = "pending" if state is EventState.PENDING else "delivered (kept for retention)"
    return Result(
        "5 size probe",
        f"`Outbox.add` with {rows:,} rows {what}",
        adds,
        10,
        seconds,
        "per add",
        latencies,
        extra={
            **{f"{k}_median_ms": statistics.median(v) for k, v in timings.items()},
            "add_p50_without_count_undelivered_ms": pct(without_count, 50),
        },
    )


# Report ------------------------------------------------------------------------------------


def machine_info(tmp: Path) -> dict[str, Any]:
    """CPU model, cores, versions, file system of the temp dir, load, date."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu_model = value.strip()
                break
    except OSError:
        pass
    fs = "unknown"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, *_ = line.split()
            if str(tmp.resolve()).startswith(mount) and len(mount) > len(best):
                best, fs = mount, f"{fstype} on {device} (mounted at {mount})"
    except OSError:
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "sqlite_utils": version("sqlite-utils"),
        "platform": platform.platform(),
        "tmp_dir": str(tmp),
        "tmp_fs": fs,
        "loadavg_at_start": os.getloadavg(),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for the table ('-' when missing)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def markdown(results: Sequence[Result]) -> str:
    """The results as one markdown table."""
    lines = [
        "| scenario | what is timed | events | slots | time s | events/s | latency measured "
        "| p50 ms | p95 ms | p99 ms | lost | duplicates | in order |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lat = r.latencies_ms
        lines.append(
            f"| {r.scenario} | {r.label} | {r.events:,} | {r.slots} | {fmt(r.seconds, 2)} "
            f"| {fmt(r.rate, 0)} | {r.latency} | {fmt(pct(lat, 50), 2)} | "
            f"{fmt(pct(lat, 95), 2)} | {fmt(pct(lat, 99), 2)} | "
            f"{'-' if r.lost is None else r.lost} | "
            f"{'-' if r.duplicates is None else r.duplicates} | "
            f"{'-' if r.in_order is None else ('yes' if r.in_order else 'NO')} |"
        )
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> str:
    """The extra numbers of each scenario, one line each."""
    out = []
    for r in results:
        if r.extra:
            parts = []
            for k, v in r.extra.items():
                parts.append(f"{k}={fmt(v, 3)}" if isinstance(v, float) else f"{k}={v}")
            out.append(f"- {r.scenario} / {r.label}: " + ", ".join(parts))
    return "\n".join(out)


async def run_all(args: argparse.Namespace, root: Path) -> list[Result]:
    """Every scenario in order, each on a fresh state file."""
    results = [
        bench_enqueue(root, args.enqueue_events, 1, "FULL"),
        bench_enqueue(root, args.enqueue_events, 10, "FULL"),
        bench_enqueue(root, args.enqueue_events, 10, "NORMAL"),
    ]
    backend = await make_backend(args.server)
    try:
        results.append(await bench_healthy(root, backend, args.delivery_events, 10, None))
        if args.slow_ms:
            results.append(
                await bench_healthy(root, backend, args.delivery_events, 10, None, args.slow_ms)
            )
        if args.paced_events:
            results.append(
                await bench_healthy(root, backend, args.paced_events, 10, args.paced_rate)
            )
        results += await bench_outage(root, backend, args.outage_events, 20)
    finally:
        await backend.close()
    if args.probe_rows:
        for state in (EventState.DELIVERED, EventState.PENDING):
            results.append(bench_size_probe(root, args.probe_rows, state))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the scenarios, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--server", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--enqueue-events", type=int, default=2000)
    parser.add_argument("--delivery-events", type=int, default=2000)
    parser.add_argument("--paced-events", type=int, default=1000, help="0 skips it")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="events/s (100)")
    parser.add_argument("--outage-events", type=int, default=10_000)
    parser.add_argument("--slow-ms", type=float, default=20.0, help="slow backend (0 skips)")
    parser.add_argument("--probe-rows", type=int, default=MAX_PENDING, help="0 skips it")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    parser.add_argument("--log-level", default="ERROR", help="agent log level (ERROR)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("agent").setLevel(args.log_level.upper())
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="outbox-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        info = machine_info(root)
        info["server"] = args.server
        results = asyncio.run(run_all(args, root))
    info["total_s"] = time.monotonic() - wall

    print(
        f"{info['date']} | {info['cpu']}, {info['cores']} cores | Python {info['python']}, "
        f"aiohttp {info['aiohttp']}, SQLite {info['sqlite']}, sqlite-utils "
        f"{info['sqlite_utils']} | temp dir on {info['tmp_fs']} | backend: {info['server']} | "
        f"load average at start {', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])} | "
        f"total {info['total_s']:.1f} s\n"
    )
    print(markdown(results))
    print()
    print(notes(results))
    if args.json:
        payload = {
            "machine": info,
            "results": [{**r.summary(), "latencies_ms": r.latencies_ms} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    failed = [r for r in results if r.lost or r.in_order is False]  # duplicates are allowed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
