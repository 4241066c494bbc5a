"""Soak: the real agent process under churn and faults for ``--minutes`` (10 by default).

What runs (all real, on this machine): Mosquitto, one GStreamer RTSP camera
(``tests/rtsp.py``, its test picture at 10 fps), an aiohttp callback backend in this
process, and ``python -m agent run`` as a child process configured by environment variables
as systemd would. Meanwhile:

* a session is started every ``--session-every`` seconds (3) on the camera, with at most
  three running (the oldest is stopped); every fifth session's callback path answers 400,
  so its events become dead letters (with the backend's reason);
* a fault every ``--fault-every`` seconds (20), in turn: the camera is killed (SIGKILL)
  and restarted 4 s later, frozen (SIGSTOP) and thawed (SIGCONT) 6 s later, or the backend
  answers 500 to everything for 6 s.

At the end every session is stopped, the outbox must drain, and the agent gets SIGTERM.
Checked, and printed as one JSON object:

* RSS, thread and open-descriptor counts of the agent (``/proc/PID``), at the baseline
  (after a warm-up: the first session cycle and one fault) and at the end (sessions
  stopped, outbox drained, 3 s idle): the end must stay within **RSS +64 MiB, threads +2,
  descriptors +8** of the baseline (warm-up allocations such as ONNX Runtime's arenas and
  the first camera open are in the baseline; a leak per session or per outage is not);
* every event in the state file is delivered exactly once (one 200 per event id at the
  backend) or a dead letter with a reason; nothing pending; no 200 for an unknown event;
* the agent exits 0 on SIGTERM.

Exit status 0 when every check holds, 1 otherwise. Not part of the test run
(``tests/test_soak.py`` runs a fraction of a minute of it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent.devkit.backend import Backend  # noqa: E402
from agent.devkit.brokers import Mosquitto  # noqa: E402
from agent.devkit.callback_receiver import CallbackServer  # noqa: E402
from tests.agent_harness import backend, spawn_agent, start_payload  # noqa: E402
from tests.rtsp import RtspServer  # noqa: E402

RSS_BOUND_MIB = 64.0
THREADS_BOUND = 2
FDS_BOUND = 8


@dataclass
class Sample:
    """Resource use of a process, from /proc."""

    rss_mib: float
    threads: int
    fds: int


def sample(pid: int) -> Sample:
    """RSS, threads and open descriptors of ``pid`` now."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return Sample(
        rss_mib=round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


@dataclass
class SoakResult:
    """What the soak measured and whether every check held."""

    minutes: float
    sessions_started: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    baseline: Sample | None = None
    end: Sample | None = None
    events: Counter[str] = field(default_factory=Counter)
    dead_reasons: Counter[str] = field(default_factory=Counter)
    posts_200: int = 0
    posts_error: int = 0
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check held."""
        return not self.problems

    def to_json(self) -> str:
        """The result as one JSON object."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Counter):
                value = dict(value)
            elif isinstance(value, Sample):
                value = asdict(value)
            data[item.name] = value
        data["ok"] = self.ok
        return json.dumps(data, indent=2)


class Soak:
    """One soak run: the parts, the churn, the faults and the checks."""

    def __init__(self, workdir: Path, minutes: float, session_every: float, fault_every: float):
        self.workdir = workdir
        self.result = SoakResult(minutes=minutes)
        self.duration = minutes * 60
        self.session_every = session_every
        self.fault_every = fault_every
        self.broker = Mosquitto(workdir / "broker")
        self.camera = RtspServer(None, fps=10, width=640, height=480)
        self.receiver = CallbackServer(mode={"": "ok", "/gone": 400})
        self.agent: subprocess.Popen[bytes] | None = None
        self.running: list[str] = []
        self.embedding = self._embedding()

    @staticmethod
    def _embedding() -> list[float]:
        vector = np.random.default_rng(19).normal(size=512)
        return [float(x) for x in vector / np.linalg.norm(vector)]

    async def run(self) -> SoakResult:
        """Run the soak and its checks (every part is stopped afterwards)."""
        self.broker.start()
        self.camera.start()
        await self.receiver.start()
        try:
            self.agent = spawn_agent(
                self.workdir,
                self.broker,
                self.receiver.url("/"),
                AGENT_CALLBACK__FIRST_RETRY_S="0.2",
                AGENT_CALLBACK__RETRY_MAX_S="2",
                AGENT_CALLBACK__AUTOSTOP_FAILURES="0",
                AGENT_CALLBACK__AUTOSTOP_SECONDS="0",
                AGENT_CAMERAS__RECONNECT_INTERVAL_S="1",
                AGENT_CAMERAS__ANALYSIS_FPS="2",
            )
            async with backend(self.broker) as b:
                await self._wait_ready(b)
                await self._churn(b)
                await self._finish(b)
            self._stop_agent()
            self._check_events()
        finally:
            if self.agent is not None and self.agent.poll() is None:
                self.agent.kill()
                self.agent.wait()
            await self.receiver.stop()
            self.camera.stop()
            self.broker.stop()
        return self.result

    async def _wait_ready(self, b: Backend) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.agent is not None
            if self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited: {self._log_tail()}")
            with contextlib.suppress(TimeoutError):
                reply = await b.send("status", {}, timeout=2)
                if reply["status"] == 200 and reply["data"]["model"]["loaded"]:
                    return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the agent did not come up: {self._log_tail()}")

    async def _churn(self, b: Backend) -> None:
        started = time.monotonic()
        warm_until = started + min(max(self.duration * 0.25, 2 * self.session_every), 60)
        next_session, next_fault, n = started, started + self.fault_every / 2, 0
        faults = ["camera_kill", "camera_freeze", "backend_500"]
        fault: asyncio.Task[None] | None = None
        while time.monotonic() - started < self.duration:
            now = time.monotonic()
            if self.result.baseline is None and now >= warm_until:
                assert self.agent is not None
                self.result.baseline = sample(self.agent.pid)
            if now >= next_session:
                await self._cycle_session(b)
                next_session += self.session_every
            if now >= next_fault and (fault is None or fault.done()):
                # A fault runs beside the churn: sessions start and stop during it.
                fault = asyncio.create_task(self._fault(faults[n % len(faults)]))
                n += 1
                next_fault = now + self.fault_every
            await asyncio.sleep(0.2)
        if fault is not None:
            await fault  # the camera and the backend are back before the end

    async def _cycle_session(self, b: Backend) -> None:
        number = self.result.sessions_started
        slot = f"soak-{number:04d}"
        path = "/gone/cb" if number % 5 == 4 else "/cb"
        payload = start_payload(
            slot,
            self.embedding,
            callbackUrl=self.receiver.url(path),
            cameras=[{"id": "cam", "name": "Soak camera", "rtspUrl": self.camera.url}],
        )
        reply = await b.send("session/start", payload, timeout=20)
        if reply["status"] != 200:
            self.result.problems.append(f"session/start {slot}: {reply}")
            return
        self.result.sessions_started += 1
        self.running.append(slot)
        if len(self.running) > 3:
            await self._stop_session(b, self.running.pop(0))

    async def _stop_session(self, b: Backend, slot: str) -> None:
        reply = await b.send("session/stop", {"slotId": slot}, timeout=20)
        # 404: it stopped by itself (all cameras failed during an outage).
        if reply["status"] not in (200, 404):
            self.result.problems.append(f"session/stop {slot}: {reply}")

    async def _fault(self, kind: str) -> None:
        self.result.faults[kind] += 1
        if kind == "camera_kill":
            self.camera.kill()
            await asyncio.sleep(4)
            await asyncio.to_thread(self.camera.restart)  # the same port
        elif kind == "camera_freeze":
            self.camera.freeze()
            await asyncio.sleep(6)
            self.camera.thaw()
        else:
            self.receiver.mode[""] = 500
            self.receiver.mode["/cb"] = 500
            await asyncio.sleep(6)
            self.receiver.mode[""] = "ok"
            del self.receiver.mode["/cb"]

    async def _finish(self, b: Backend) -> None:
        for slot in list(self.running):
            await self._stop_session(b, slot)
        self.running.clear()
        deadline = time.monotonic() + 60
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            reply = await b.send("status", {}, timeout=10)
            counts = reply["data"]["outbox"]["counts"]
            if not reply["data"]["sessions"] and not counts.get("pending"):
                break
            await asyncio.sleep(0.5)
        else:
            self.result.problems.append(f"the outbox did not drain: {counts}")
        await asyncio.sleep(3)
        assert self.agent is not None
        self.result.end = end = sample(self.agent.pid)
        base = self.result.baseline
        if base is None:
            self.result.problems.append("no baseline sample (run too short)")
            return
        if end.rss_mib > base.rss_mib + RSS_BOUND_MIB:
            self.result.problems.append(f"RSS grew {end.rss_mib - base.rss_mib:.1f} MiB")
        if end.threads > base.threads + THREADS_BOUND:
            self.result.problems.append(f"threads grew by {end.threads - base.threads}")
        if end.fds > base.fds + FDS_BOUND:
            self.result.problems.append(f"descriptors grew by {end.fds - base.fds}")

    def _stop_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGTERM)
        try:
            self.result.exit_code = self.agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.result.problems.append("the agent did not exit within 30 s of SIGTERM")
            return
        if self.result.exit_code != 0:
            self.result.problems.append(f"exit code {self.result.exit_code} on SIGTERM")

    def _check_events(self) -> None:
        db = sqlite3.connect(f"file:{self.workdir / 'data' / 'agent.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("select event_id, type, state, last_error from events").fetchall()
        finally:
            db.close()
        answered = Counter(
            r.body.get("eventId") for r in self.receiver.received if r.answered == 200
        )
        self.result.posts_200 = sum(answered.values())
        self.result.posts_error = sum(1 for r in self.receiver.received if r.answered != 200)
        known = set()
        for event_id, kind, state, error in rows:
            known.add(event_id)
            self.result.events[f"{kind}:{state}"] += 1
            if state == "delivered" and answered[event_id] != 1:
                self.result.problems.append(f"{event_id} delivered {answered[event_id]} times")
            elif state == "dead":
                if not error:
                    self.result.problems.append(f"dead letter {event_id} without a reason")
                self.result.dead_reasons[str(error)[:60]] += 1
            elif state == "pending":
                self.result.problems.append(f"{event_id} still pending")
        unknown = [e for e in answered if e not in known]
        if unknown:
            self.result.problems.append(f"{len(unknown)} events answered 200 but not stored")

    def _log_tail(self) -> str:
        log = self.workdir / "agent.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""


async def run_soak(
    minutes: float, workdir: Path, *, session_every: float = 3.0, fault_every: float = 20.0
) -> SoakResult:
    """One soak in ``workdir`` (the agent's data, log and broker live there)."""
    return await Soak(workdir, minutes, session_every, fault_every).run()


def main() -> int:
    """Command line: run the soak, print the result, exit 0 when every check held."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--session-every", type=float, default=3.0)
    parser.add_argument("--fault-every", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    result = asyncio.run(
        run_soak(
            args.minutes, workdir, session_every=args.session_every, fault_every=args.fault_every
        )
    )
    print(result.to_json())
    print(f"work folder: {workdir}" + ("" if args.keep else " (removed)"), file=sys.stderr)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
