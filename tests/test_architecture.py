"""The import rules of docs/architecture.md, checked on the source: who may import whom,
and which modules stay light (no ONNX Runtime, no InsightFace)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agent"

TRANSPORT = {
    "agent.transport.mqtt",
    "agent.commands.processor",
    "agent.transport.replies",
    "agent.commands.handlers",
    "agent.transport.local_http",
    "agent.transport.webui",
    "agent.events.delivery",
    "agent.events.outbox",
    "aiohttp",
    "aiomqtt",
    "paho",
}
CAMERA_CODE = {
    "agent.camera.reader",
    "agent.camera.video_source",
    "agent.camera.view",
    "agent.camera.check",
    "agent.session.scheduler",
}
ENGINE_CODE = {
    "agent.vision.engine",
    "agent.vision.onnx_sessions",
    "agent.vision.modelpack",
    "agent.vision.faces",
    "agent.vision.matching",
    "agent.vision.tracker",
    "agent.vision.recognition",
    "agent.vision.photo",
    "agent.vision.quality",
    "agent.vision.embedding",
    "agent.vision.coverage",
    "agent.vision.evidence",
}
DOMAIN = {
    "agent.session.manager",
    "agent.session.plan",
    "agent.session.autostop",
    "agent.session.limits",
    "agent.session.runner",
    "agent.session.attendance",
    "agent.vision.recognition",
    "agent.session.presence",
    "agent.session.placement",
}
LIGHT = sorted(
    CAMERA_CODE - {"agent.camera.check"}
    | {
        "agent.vision.tracker",
        "agent.vision.coverage",
        "agent.vision.evidence",
        "agent.session.presence",
        "agent.session.placement",
        "agent.session.limits",
        "agent.session.plan",
        "agent.session.autostop",
        "agent.vision.faces",
        "agent.config",
        "agent.errors",
        "agent.protocol",
        "agent.status.models",
        "agent.session.manager",
        "agent.session.runner",
        "agent.transport.webui",
        "agent.transport.local_http",
    }
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each agent module's imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
        names: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[_module_name(path)] = names
    return found


IMPORTS = _imports()


def _hits(module: str, forbidden: set[str]) -> list[str]:
    return sorted(
        name
        for name in IMPORTS[module]
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_the_rules_name_real_modules() -> None:
    for module in CAMERA_CODE | ENGINE_CODE | DOMAIN | set(LIGHT):
        assert module in IMPORTS, f"{module} is gone: update docs/architecture.md and this test"


@pytest.mark.parametrize("module", sorted(CAMERA_CODE))
def test_camera_code_imports_no_transport(module: str) -> None:
    assert _hits(module, TRANSPORT) == []


@pytest.mark.parametrize("module", sorted(ENGINE_CODE | DOMAIN))
def test_engine_and_domain_import_no_transport(module: str) -> None:
    assert _hits(module, TRANSPORT | {"agent.status.reporter", "agent.app"}) == []


@pytest.mark.parametrize(
    "module",
    [
        "agent.config",
        "agent.config.sections",
        "agent.config.cameras",
        "agent.config.mqtt",
        "agent.config.secrets",
    ],
)
def test_config_imports_nothing_of_the_agent_but_the_error_tree(module: str) -> None:
    agent_imports = {n for n in IMPORTS[module] if n.startswith("agent.")}
    allowed = {"agent.config.", "agent.errors"}
    assert {n for n in agent_imports if not any(n.startswith(a) for a in allowed)} == set()


def test_only_entry_points_import_the_app() -> None:
    importers = sorted(m for m, names in IMPORTS.items() if "agent.app" in names)
    assert importers == ["agent.cli", "agent.devkit.demo"]


def test_handlers_reach_the_transport_only_through_the_command_processor() -> None:
    for module in (m for m in IMPORTS if m.startswith("agent.commands.handlers")):
        assert (
            _hits(module, TRANSPORT - {"agent.commands.processor", "agent.commands.handlers"}) == []
        )


def test_light_modules_do_not_load_onnx_runtime_or_insightface() -> None:
    code = (
        "import sys\n"
        f"for m in {LIGHT!r}: __import__(m)\n"
        "heavy = [m for m in ('onnxruntime', 'insightface') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
