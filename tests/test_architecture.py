"""The import rules of docs/architecture.md, checked on the source, by folder: who may import
whom, no import cycle between modules, and which modules stay light (no ONNX Runtime, no
InsightFace).

The rules name folders (``agent/camera/``, ``agent/session/``, ...), so a module added to a
folder is bound by its folder's rules at once; a module outside every folder must be one of
the listed core modules or entry points (``test_every_module_is_bound_by_a_rule``).
Imports are those made at run time, function-level ones included; ``if TYPE_CHECKING:``
blocks are left out (annotations only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agent"

# The folders; each is bound by at least one rule of RULES.
FOLDERS = (
    "agent.camera",
    "agent.commands",
    "agent.config",
    "agent.devkit",
    "agent.events",
    "agent.session",
    "agent.status",
    "agent.transport",
    "agent.vision",
)
# Where the agent starts: the composition root (`app`) and the command line. They may import
# anything (CORE_RULE does not bind them); who may import them is checked below.
ENTRY_POINTS = {"agent.__main__", "agent.cli", "agent.app"}
# The small core beside the folders: imported by every folder, so it imports no folder but
# the few its role needs (CORE_NEEDS).
CORE = {
    "agent",  # the package: __version__
    "agent.allowlist",
    "agent.backoff",
    "agent.cli_help",
    "agent.errors",
    "agent.lanes",
    "agent.logs",
    "agent.protocol",
    "agent.redaction",
    "agent.schemas",
    "agent.supervisor",
}
CORE_NEEDS = {
    # It sets logging up from the [logging] section of the configuration.
    "agent.logs": ("agent.config",),
    # It writes the JSON Schemas of every published message, the status document and the
    # online/offline messages included: those wire models live in status/models.
    "agent.schemas": ("agent.status.models",),
    # It reports each supervised task's health as the status document's TaskStatus.
    "agent.supervisor": ("agent.status.models",),
}
# The network libraries: the wire is transport/'s, and callbacks' (events/delivery).
NETWORK = ("aiohttp", "aiomqtt", "paho")
NETWORK_OWNERS = ("agent.transport", "agent.events.delivery", "agent.devkit")


@dataclass(frozen=True)
class Rule:
    """Modules under ``who`` (folders or modules, minus ``but``) never import ``never``; with
    ``only``, they import nothing of the agent outside ``only``."""

    who: tuple[str, ...]
    why: str
    never: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    but: tuple[str, ...] = ()


RULES = (
    Rule(
        who=("agent.camera", "agent.vision"),
        never=(
            "agent.transport",
            "agent.commands",
            "agent.session",
            "agent.events",
            "agent.status.reporter",
        ),
        why="cameras and models read frames and faces: they know no session, store or wire",
    ),
    Rule(
        who=("agent.session",),
        never=(
            "agent.transport",
            "agent.commands",
            "agent.status.reporter",
            "agent.events.outbox",
            "agent.events.delivery",
        ),
        why="sessions are driven by commands; they store events, delivering them is not theirs",
    ),
    Rule(
        who=("agent.events",),
        never=(
            "agent.transport",
            "agent.commands",
            "agent.session",
            "agent.camera",
            "agent.vision",
        ),
        why="the state file, the outbox and delivery serve every layer above them",
    ),
    Rule(
        who=("agent.transport",),
        never=("agent.commands", "agent.events"),
        why="the transport carries messages; commands are dispatched above it",
    ),
    Rule(
        who=("agent.commands",),
        never=("agent.camera", "agent.events.outbox", "agent.events.delivery"),
        why="commands act through the session manager: cameras and events are the sessions'",
    ),
    Rule(
        who=("agent.commands",),
        but=("agent.commands.processor",),
        never=("agent.transport",),
        why="handlers reach the transport only through the command processor",
    ),
    Rule(
        who=("agent.status",),
        never=("agent.commands",),
        why="commands read the status, not the other way round",
    ),
    Rule(
        who=("agent.status",),
        # The reporter gathers the status document from every part of the running agent.
        but=("agent.status.reporter",),
        never=(
            "agent.transport",
            "agent.events",
            "agent.camera",
            "agent.vision",
        ),
        why="the status vocabulary and its views are imported by every layer",
    ),
    Rule(
        who=("agent.config",),
        only=("agent.config", "agent.errors"),
        why="the configuration imports nothing of the agent but the error tree",
    ),
    Rule(
        who=("agent.devkit",),
        never=(
            "agent.transport",
            "agent.commands",
            "agent.session",
            "agent.events",
            "agent.status",
        ),
        why="the demo's and the tests' stand-ins talk to the agent over the wire, like a backend",
    ),
)

# Known exceptions to the rules, each with its reason; none today. An allowance that no
# longer matches an import fails test_allowances_are_still_needed.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The agent module an imported name lives in (the longest module prefix)."""
    while name and name not in SOURCES:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path) -> set[str]:
    """Every name imported at run time (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


NAMES = {m: _imported_names(m, p) for m, p in SOURCES.items()}
# Each module's imports of other agent modules.
GRAPH = {
    m: {r for n in names if n.split(".")[0] == "agent" and (r := _resolve(n)) not in (None, m)}
    for m, names in NAMES.items()
}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _bound(rule: Rule, module: str) -> bool:
    return _under(module, rule.who) and not _under(module, rule.but)


def _breaks(rule: Rule, module: str, imported: str) -> bool:
    if rule.only is not None and not _under(imported, rule.only):
        return True
    return _under(imported, rule.never)


def _violations() -> list[tuple[str, str, str]]:
    """(module, imported module, the rule's reason) for every import a rule forbids."""
    found = []
    for rule in RULES:
        for module in sorted(m for m in GRAPH if _bound(rule, m)):
            found.extend(
                (module, imported, rule.why)
                for imported in sorted(GRAPH[module])
                if _breaks(rule, module, imported)
            )
    return found


def test_folder_rules() -> None:
    broken = [
        f"{module} imports {imported}: {why}"
        for module, imported, why in _violations()
        if (module, imported) not in ALLOWED
    ]
    assert broken == []


def test_allowances_are_still_needed() -> None:
    found = {(module, imported) for module, imported, _ in _violations()}
    assert [pair for pair in ALLOWED if pair not in found] == [], "fixed: drop the allowance"


def test_the_core_imports_no_folder_but_what_its_role_needs() -> None:
    broken = []
    for module in sorted(CORE):
        allowed = (*CORE_NEEDS.get(module, ()),)
        broken.extend(
            f"{module} imports {imported}"
            for imported in sorted(GRAPH[module])
            if imported not in CORE and not _under(imported, allowed)
        )
    assert broken == []


def test_only_entry_points_import_the_app() -> None:
    importers = sorted(m for m, deps in GRAPH.items() if "agent.app" in deps)
    assert importers == ["agent.cli", "agent.devkit.demo"]


def test_only_the_command_line_imports_the_devkit() -> None:
    importers = sorted(
        m
        for m, deps in GRAPH.items()
        if not _under(m, ("agent.devkit",)) and any(_under(d, ("agent.devkit",)) for d in deps)
    )
    assert importers == ["agent.cli"]  # `python -m agent demo` runs agent.devkit.demo


def test_only_the_transport_and_delivery_import_network_libraries() -> None:
    importers = sorted(
        f"{m} imports {n}"
        for m, names in NAMES.items()
        if not _under(m, NETWORK_OWNERS)
        for n in names
        if _under(n, NETWORK)
    )
    assert importers == []


def test_every_module_is_bound_by_a_rule() -> None:
    """A new folder needs its rules; a new module outside the folders must be listed here."""
    assert set(FOLDERS) == {_module_name(p.parent) for p in PACKAGE.glob("*/__init__.py")}, (
        "a folder was added or removed: give it its rules in RULES and FOLDERS"
    )
    assert {f for f in FOLDERS if not any(_bound(r, f) for r in RULES)} == set()
    unbound = sorted(
        m
        for m in SOURCES
        if m not in CORE | ENTRY_POINTS and not any(_bound(rule, m) for rule in RULES)
    )
    assert unbound == [], "a module outside the folders: move it or list it in CORE"


def test_the_rules_name_real_modules() -> None:
    named = {
        *FOLDERS,
        *CORE,
        *ENTRY_POINTS,
        *(name for r in RULES for name in (*r.who, *r.never, *(r.only or ()), *r.but)),
        *(name for needs in CORE_NEEDS.values() for name in needs),
        *(name for pair in ALLOWED for name in pair),
        *NETWORK_OWNERS,
        *HEAVY,
    }
    assert sorted(n for n in named if n not in SOURCES) == []


def _cycle() -> list[str]:
    """One import cycle between modules, as a path ``[a, b, ..., a]``; [] when none."""
    done: set[str] = set()
    for start in sorted(GRAPH):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(GRAPH[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(GRAPH[child]))))
                path.append(child)
                on_path.add(child)
    return []


def test_no_import_cycle_between_modules() -> None:
    assert " -> ".join(_cycle()) == ""


def test_the_cycle_finder_finds_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)
    assert _cycle() == ["a", "b", "c", "a"]


# Modules of the light folders that must load ONNX Runtime or InsightFace.
HEAVY = {
    "agent.vision.engine": "runs the models",
    "agent.vision.onnx_sessions": "opens ONNX Runtime sessions",
    "agent.vision.modelpack": "verifies a pack's models with ONNX Runtime",
    "agent.vision.defaultpack": "installs and verifies the default pack",
    "agent.vision.pack_order": "reads packs (modelpack)",
    "agent.vision.model_watch": "loads the new engine on a hot swap",
    "agent.vision.embedding": "computes an embedding with the engine",
    "agent.commands.embedding_generate": "runs embedding/generate (vision.embedding)",
    "agent.commands.handlers": "wires every command, embedding/generate included",
}
LIGHT_FOLDERS = (
    "agent.camera",
    "agent.commands",
    "agent.config",
    "agent.events",
    "agent.session",
    "agent.status",
    "agent.transport",
    "agent.vision",
)
LIGHT = sorted(
    m for m in SOURCES if (_under(m, LIGHT_FOLDERS) or m in CORE | {"agent.cli"}) and m not in HEAVY
)


def test_light_modules_do_not_load_onnx_runtime_or_insightface() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {LIGHT!r}:\n"
        "    importlib.import_module(m)\n"
        "    heavy = [h for h in ('onnxruntime', 'insightface') if h in sys.modules]\n"
        "    if heavy:\n"
        "        print(m, 'loads', ','.join(heavy))\n"
        "        break\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
