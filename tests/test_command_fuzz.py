"""Property-based: thousands of random and mutated command payloads through a real broker.

Whatever arrives, the agent answers every message with a well-formed reply and keeps
running.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app import Agent, AgentState
from agent.devkit.backend import Backend
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import API_KEY, agent_config, backend, running_agent, start_payload

STATUSES = {200, 400, 401, 404, 409, 422, 500, 503}
COMMAND_NAMES = [
    "session/start",
    "session/stop",
    "embedding/generate",
    "status",
    "",
    "x",
    "session",
    "session/start/extra",
    "STATUS",
    "embedding",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)

VALID = start_payload("slot-fuzz", [0.04] * 512)


@st.composite
def mutated_start(draw: st.DrawFn) -> dict[str, Any]:
    """A valid session/start with one field replaced, removed or added."""
    payload = copy.deepcopy(VALID)
    payload["slotId"] = draw(st.text(min_size=1, max_size=10))
    target: dict[str, Any] = payload
    if draw(st.booleans()):
        target = draw(st.sampled_from([payload["cameras"][0], payload["students"][0]]))
    key = draw(st.sampled_from([*target.keys(), "extra"]))
    action = draw(st.sampled_from(["replace", "remove"]))
    if action == "remove":
        target.pop(key, None)
    else:
        target[key] = draw(json_values)
    return payload


payloads = st.one_of(
    json_values.map(lambda v: {"value": v} if not isinstance(v, dict) else v),
    json_values,
    mutated_start(),
    st.binary(max_size=64),
)


@pytest.fixture
async def fuzz_target(tmp_path: Path) -> AsyncIterator[tuple[Agent, Backend]]:
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.start()
    try:
        async with (
            running_agent(agent_config(tmp_path / "agent", broker)) as agent,
            backend(broker) as b,
        ):
            yield agent, b
    finally:
        broker.stop()


@pytest.mark.slow
@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(COMMAND_NAMES),
    payload=payloads,
    key=st.sampled_from([API_KEY, API_KEY, API_KEY, None, "wrong"]),
)
async def test_every_payload_gets_one_wellformed_reply(
    fuzz_target: tuple[Agent, Backend], name: str, payload: Any, key: str | None
) -> None:
    agent, b = fuzz_target
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reply = await b.send(name, body, api_key=key, timeout=10)
    assert set(reply) == {"requestId", "status", "code", "message", "data"}
    assert reply["status"] in STATUSES
    assert (reply["code"] is None) == (reply["status"] == 200)
    assert isinstance(reply["message"], str) and reply["message"]
    if key != API_KEY and not (isinstance(payload, dict) and payload.get("apiKey") == API_KEY):
        assert reply["status"] in {401, 422}
    assert agent.state is AgentState.RUNNING
