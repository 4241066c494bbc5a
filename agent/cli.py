"""Command line: ``python -m agent <command>`` (also installed as ``edge-agent``).

Its help text is in :mod:`agent.cli_help`. Exit codes: 0 success; 1 the command ran and
failed (e.g. ``outbox`` found no state file); 2 the configuration or the command line is
invalid, or ``run`` found another agent running on its data directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from agent import __version__
from agent.cli_help import COMMANDS, DESCRIPTION, EXIT_CODES
from agent.config import AgentConfig, ConfigError, config_warnings, load_config, masked_dump
from agent.errors import AgentError, ModelNotLoadedError, ModelPackError
from agent.events.instance_lock import InstanceLock, InstanceLockedError
from agent.logs import setup_logging
from agent.protocol import Reply
from agent.status.models import AgentStatus, CameraHealth, ModelLoaded, wire

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

log = logging.getLogger("agent.cli")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: ./config.toml when present)",
    )


def _resolve_config_path(path: Path | None) -> Path | None:
    if path is not None:
        return path
    default = Path("config.toml")
    return default if default.is_file() else None


def _load(path: Path | None) -> AgentConfig:
    return load_config(_resolve_config_path(path))


def _print_config_errors(exc: ConfigError) -> None:
    print("Configuration is invalid:", file=sys.stderr)
    for key, problem in exc.errors:
        print(f"  {key}: {problem}", file=sys.stderr)


def _print_config_warnings(cfg: AgentConfig) -> None:
    for key, problem in config_warnings(cfg):
        print(f"Warning: {key}: {problem}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config (and read every file it names); print it with secrets masked,
    or every error by key path; warn about what would make the agent useless."""
    path = args.file or args.config
    try:
        cfg = _load(path)
    except ConfigError as exc:
        _print_config_errors(exc)
        return EXIT_INVALID
    print(json.dumps(masked_dump(cfg), indent=2))
    _print_config_warnings(cfg)
    print("Configuration is valid.", file=sys.stderr)
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    """Generate an enrollment embedding from a photo file."""
    from agent.vision.embedding import generate_embedding
    from agent.vision.engine import load_engine
    from agent.vision.modelpack import select_pack
    from agent.vision.photo import read_photo_file

    cfg = _load(args.config)
    setup_logging(cfg.logging)
    try:
        photo = read_photo_file(args.photo, cfg.enrollment.max_photo_bytes)
        try:
            pack = select_pack(cfg.models.dir, cfg.models.pack)
            engine = load_engine(pack, cfg.models, cfg.recognition)
        except ModelPackError as exc:
            raise ModelNotLoadedError(exc.message) from exc
        result = generate_embedding(
            engine, cfg.enrollment, photo=photo, submission_id=args.submission_id
        )
        reply = Reply.ok("Embedding generated.", result.as_data())
    except AgentError as exc:
        log.warning("EMBED_FAILED code=%s status=%d", exc.code, exc.status)
        reply = Reply.from_error(exc)
    if args.json:
        print(json.dumps(reply.to_json_dict(with_request_id=False)))
    elif reply.code is None and reply.data is not None:
        data = reply.data
        print(f"OK: {len(data['embedding'])}-d embedding, space {data['embeddingSpace']}")
        print(f"  face box {data['bbox']}, detector score {data['detScore']}")
        print(f"  quality score {data['quality']['score']}")
    else:
        print(f"{reply.code} ({reply.status}): {reply.message}", file=sys.stderr)
    return EXIT_OK if reply.code is None else EXIT_FAILED


def cmd_models(args: argparse.Namespace) -> int:
    """Install the default pack or verify packs."""
    from agent.vision.modelpack import verify_packs

    cfg = _load(args.config)
    if args.action == "install-default":
        from agent.vision.defaultpack import DefaultPackError, install_default_pack

        try:
            pack = install_default_pack(cfg.models.dir)
        except DefaultPackError as exc:
            print(f"Cannot install the default pack: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"Installed {pack.name} in {pack.path} (space {pack.embedding_space})")
        return EXIT_OK
    checks = verify_packs(cfg.models.dir, args.pack)
    if not checks:
        print(f"No model pack in {cfg.models.dir}", file=sys.stderr)
        return EXIT_FAILED
    for check in checks:
        print(check.line())
    return EXIT_FAILED if any(c.pack is None for c in checks) else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT; one agent per data directory."""
    # The config first: an invalid one exits 2 at once, before the models' heavy imports.
    cfg = _load(args.config)
    setup_logging(cfg.logging)
    lock = InstanceLock(cfg.storage.data_dir)
    try:
        lock.acquire()
    except InstanceLockedError as exc:
        log.error("%s %s", exc.code, exc.message)
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"Cannot lock the data directory {cfg.storage.data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:  # the lock is held until the process is about to exit
        return _run_agent(cfg)
    finally:
        lock.release()


def _run_agent(cfg: AgentConfig) -> int:
    import asyncio
    import signal

    from agent.app import Agent

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(_main())
    except Exception as exc:
        log.exception("AGENT_CRASHED error=%s", exc)
        return EXIT_FAILED
    return EXIT_OK


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write the protocol's JSON Schemas."""
    from agent.schemas import write_schemas

    for path in write_schemas(args.out):
        print(path)
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace) -> int:
    """Show the outbox, or re-queue its dead letters, in an existing state file (opened
    read-only to show; never created)."""
    from agent.events.outbox import Outbox
    from agent.events.store import DB_NAME, Store, StoreError

    config_path = _resolve_config_path(args.config)
    cfg = load_config(config_path)
    print(
        f"config: {config_path or '(none: defaults and environment)'}; "
        f"state file: {cfg.storage.data_dir / DB_NAME}",
        file=sys.stderr,
    )
    mode: Literal["ro", "rw"] = "rw" if args.action == "retry" else "ro"
    try:
        store = Store(cfg.storage.data_dir, busy_wait_s=cfg.storage.busy_wait_s, mode=mode)
    except StoreError as exc:
        print(f"Cannot open the outbox: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    try:
        outbox = Outbox(store, max_pending=cfg.callback.max_pending_events)
        if args.action == "retry":
            print(f"Re-queued {outbox.retry_dead()} dead letter(s).")
        else:
            print(json.dumps(wire(outbox.describe()), indent=2, default=str))
    except StoreError as exc:
        print(f"[{exc.code}] {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running agent's state from its local endpoint."""
    import urllib.error
    import urllib.request

    cfg = _load(args.config)
    port = args.port or cfg.metrics.port
    url = f"http://{cfg.metrics.host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"The agent does not answer at {url} ({exc}). Is it running "
            "(systemctl status edge-agent) with [metrics] enabled?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    _print_status(AgentStatus.model_validate(status))
    return EXIT_OK


def _print_status(status: AgentStatus) -> None:
    from agent.session.history import reason_words
    from agent.status.view import display_state

    agent, model = status.agent, status.model
    print(
        f"agent   {agent.state}  version {agent.version}  site {agent.site_id}  "
        f"up {agent.uptime_seconds:.0f} s"
    )
    if isinstance(model, ModelLoaded):
        print(f"model   {model.pack}  space {model.embedding_space}  providers {model.providers}")
    else:
        print(f"model   NOT LOADED: {model.reason}")
    mqtt = status.mqtt
    print(f"mqtt    {'connected' if mqtt.connected else 'DISCONNECTED'} (MQTT {mqtt.protocol})")
    counts = status.outbox.counts if status.outbox else {}
    print(
        f"outbox  pending {counts.get('pending', 0)}  dead {counts.get('dead', 0)}  "
        f"delivered {counts.get('delivered', 0)}"
    )
    for session in status.sessions:
        waiting = session.waiting_for_cameras_seconds
        print(
            f"session {session.slot_id}  {session.mode}  {session.students} students"
            + ("" if waiting is None else f"  WAITING for its cameras, stops in {waiting:.0f} s")
        )
        for cam in session.cameras:
            # display_state: the page's words for a camera state, so both say the same.
            if isinstance(cam, CameraHealth):
                line = (
                    f"  camera {cam.id}  {display_state(cam.state)}  "
                    f"age {cam.frame_age_seconds} s  analysed {cam.frames_analysed}  "
                    f"reconnects {cam.reconnects}  {cam.last_error or ''}"
                )
            else:
                line = f"  camera {cam.id}  {display_state(None)}  no frame yet"
            print(line.rstrip())
    for ended in status.recent_sessions:
        print(
            f"ended   {ended.slot_id}  {ended.reason} ({reason_words(ended.reason)})  "
            f"{ended.started_at} to {ended.ended_at}  "
            f"recognised {ended.recognised}/{ended.students}"
        )
    for warning in status.warnings:
        print(f"WARNING {warning}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the one-command demo."""
    from agent.config import LoggingConfig
    from agent.devkit.demo import main as demo_main

    cfg = _load(args.config)
    setup_logging(LoggingConfig(level="DEBUG" if args.verbose else "WARNING", format="text"))
    return demo_main(cfg, session_seconds=args.seconds, broker=args.broker)


def _formatter(prog: str) -> argparse.HelpFormatter:
    """Descriptions and epilogs as written (their lists keep their lines); every command's
    help on its name's line."""
    formatter = argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)
    # argparse measures the command names one indent short of where it prints them, so
    # "check-config" would get its help on the next line: start the column wide enough.
    formatter._action_max_length = 18
    return formatter


def _command(sub: Any, name: str) -> argparse.ArgumentParser:
    """A subcommand's parser: plain-text description, actions and the exit codes."""
    short, description = COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=short, description=description, epilog=EXIT_CODES, formatter_class=_formatter
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the documentation test)."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    check = _command(sub, "check-config")
    check.add_argument("file", nargs="?", type=Path, default=None, help="TOML config file")
    _config_arg(check)
    check.set_defaults(func=cmd_check_config)

    embed = _command(sub, "embed")
    embed.add_argument("photo", nargs="?", default=None, help="image file (JPEG, PNG, ...)")
    embed.add_argument("--submission-id", default=None, help="echoed in the result")
    embed.add_argument("--json", action="store_true", help="print the reply object as JSON")
    _config_arg(embed)
    embed.set_defaults(func=cmd_embed)

    run = _command(sub, "run")
    _config_arg(run)
    run.set_defaults(func=cmd_run)

    demo = _command(sub, "demo")
    demo.add_argument("--seconds", type=float, default=90.0, help="longest session time")
    demo.add_argument("--verbose", action="store_true", help="show the agent's log")
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="auto: Mosquitto when installed, else amqtt in-process (MQTT 3.1.1)",
    )
    _config_arg(demo)
    demo.set_defaults(func=cmd_demo)

    status = _command(sub, "status")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--port", type=int, default=0, help="endpoint port (default: config)")
    _config_arg(status)
    status.set_defaults(func=cmd_status)

    outbox = _command(sub, "outbox")
    outbox.add_argument(
        "action", nargs="?", choices=["show", "retry"], default="show", help="show or retry"
    )
    _config_arg(outbox)
    outbox.set_defaults(func=cmd_outbox)

    schemas = _command(sub, "schemas")
    schemas.add_argument("--out", type=Path, default=Path("docs/schemas"), help="folder")
    schemas.set_defaults(func=cmd_schemas)

    models = _command(sub, "models")
    models.add_argument(
        "action", choices=["install-default", "verify"], help="install-default or verify"
    )
    models.add_argument("pack", nargs="?", default="", help="pack folder name (verify)")
    _config_arg(models)
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        _print_config_errors(exc)
        return EXIT_INVALID
    return code
