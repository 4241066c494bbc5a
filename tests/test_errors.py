"""One error tree: every exception the agent defines is an AgentError carrying an
ErrorCode, and every code is raised or reported somewhere."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import agent
from agent.allowlist import CallbackUrlError, check_callback_url
from agent.config import ConfigError
from agent.errors import AgentError, ErrorCode
from agent.session.manager import SessionStopError
from agent.vision.defaultpack import DefaultPackError

AGENT_DIR = Path(agent.__file__).parent


def _agent_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(agent.__path__, prefix="agent."):
        if info.name == "agent.__main__":
            continue  # running it is the CLI
        if info.name == "agent.devkit.rtsp_server_main":
            continue  # a script for Debian's Python (GStreamer bindings), not the venv's
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def test_every_agent_exception_is_an_agent_error() -> None:
    exceptions = _agent_exceptions()
    names = {cls.__name__ for cls in exceptions}
    # The walk finds the known ones (a broken walk must not pass by finding nothing).
    assert {"AgentError", "StoreError", "ConfigError", "DefaultPackError"} <= names
    assert {"SessionStopError", "CallbackUrlError", "OutboxFullError"} <= names
    strays = [
        f"{c.__module__}.{c.__qualname__}" for c in exceptions if not issubclass(c, AgentError)
    ]
    assert strays == [], f"exceptions outside the AgentError tree: {strays}"


def test_every_code_is_used_in_the_agent() -> None:
    sources = "\n".join(
        p.read_text(encoding="utf-8") for p in AGENT_DIR.rglob("*.py") if p.name != "errors.py"
    )
    used = set(re.findall(r"ErrorCode\.([A-Z_]+)", sources))
    unused = sorted(code.name for code in ErrorCode if code.name not in used)
    assert unused == [], f"codes nothing raises or reports: {unused}"


def test_former_roots_carry_their_codes() -> None:
    config = ConfigError([("mqtt.port", "too large"), ("(file)", "missing")])
    assert config.code is ErrorCode.CONFIG_INVALID
    assert str(config) == "mqtt.port: too large; (file): missing"
    assert config.errors == [("mqtt.port", "too large"), ("(file)", "missing")]
    assert DefaultPackError("gone").code is ErrorCode.MODEL_PACK_INVALID
    assert SessionStopError("stuck").code is ErrorCode.STOP_SESSION_FAILED
    with pytest.raises(CallbackUrlError) as info:
        check_callback_url("ftp://x/", ["http://127.0.0.1/"])
    assert info.value.code is ErrorCode.CALLBACK_URL_NOT_ALLOWED
    assert isinstance(info.value, ValueError)  # config validators rely on it
    assert str(info.value) == "must start with http:// or https://"
