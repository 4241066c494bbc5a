"""What a new session may open: its cameras resolved against the site's registry and
allowlist, and the limits it must fit (sessions and open cameras on this agent, one reader
per camera unless sharing is allowed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.camera.urls import CAMERA_PORTS, check_inline_camera_url, literal_address
from agent.config import CamerasConfig, RuntimeConfig
from agent.config.hosts import is_localhost_name
from agent.errors import AgentError, ErrorCode


@dataclass(frozen=True)
class SessionCamera:
    """A camera of a running session, with its URL resolved."""

    id: str
    name: str
    url: str


if TYPE_CHECKING:
    from agent.protocol import SessionStart
    from agent.session.manager import ActiveSession


def resolve_cameras(command: SessionStart, cameras: CamerasConfig) -> list[SessionCamera]:
    """The session's cameras with their URLs: inline URLs checked against the site's
    allowlist, ids looked up in the registry (credentials were read with the config)."""
    resolved, unknown = [], []
    for spec in command.cameras:
        if spec.rtsp_url:
            check_inline_camera_url(spec.id, spec.rtsp_url, cameras)
            resolved.append(SessionCamera(spec.id, spec.name or spec.id, spec.rtsp_url))
            continue
        entry = cameras.find(spec.id)
        if entry is None:
            unknown.append(spec.id)
        else:
            name = spec.name or entry.name or entry.id
            resolved.append(SessionCamera(entry.id, name, entry.stream_url()))
    if unknown:
        raise AgentError(
            ErrorCode.CAMERA_NOT_FOUND,
            f"Camera(s) {', '.join(unknown)} are not in this site's configuration; "
            "give an rtspUrl or add them to [cameras] registry.",
            status=404,
            details={"cameraIds": unknown},
        )
    return resolved


def _canonical_host(host: str) -> str:
    """``localhost`` is 127.0.0.1; addresses in one spelling (``::ffff:10.0.0.5`` is
    10.0.0.5); other names lower-cased (they are never resolved)."""
    name = host.lower().strip("[]")
    if is_localhost_name(name):
        return "127.0.0.1"
    address = literal_address(name)
    return name if address is None else str(address)


def camera_identity(url: str) -> str:
    """What makes two camera URLs the same stream: everything but credentials, with the
    scheme and host in one spelling and the scheme's default port made explicit."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = _canonical_host(parts.hostname or "")
        port = parts.port or CAMERA_PORTS.get(scheme)
    except ValueError:
        return url.strip()
    if not scheme:
        return url.strip()
    return f"{scheme}://{host}:{port}{parts.path or '/'}?{parts.query}"


def same_camera(a: str, b: str) -> bool:
    """Whether two URLs name the same stream (:func:`camera_identity`)."""
    return camera_identity(a) == camera_identity(b)


def check_limits(
    cameras: Sequence[SessionCamera],
    others: Sequence[ActiveSession],
    limits: RuntimeConfig,
    *,
    allow_shared: bool,
) -> None:
    """Refuse a session (its ``cameras``) past the configured sessions or cameras beside
    the ``others`` running or stopping, or one that would open a camera another session
    already reads (unless sharing is allowed)."""
    if len(others) >= limits.max_sessions:
        raise AgentError(
            ErrorCode.LIMIT_EXCEEDED,
            f"This agent already runs {limits.max_sessions} sessions "
            "([runtime] max_sessions); stop one first.",
            status=409,
            details={"limit": "max_sessions", "value": limits.max_sessions},
        )
    running = [c for s in others for c in s.camera_plan]
    if len(running) + len(cameras) > limits.max_cameras:
        raise AgentError(
            ErrorCode.LIMIT_EXCEEDED,
            f"This session's {len(cameras)} camera(s) would exceed the agent's "
            f"{limits.max_cameras} open cameras ([runtime] max_cameras); "
            f"{len(running)} are open.",
            status=409,
            details={"limit": "max_cameras", "value": limits.max_cameras},
        )
    if allow_shared:
        return
    in_use = {camera_identity(c.url): c.id for c in running}
    clashes = sorted(c.id for c in cameras if camera_identity(c.url) in in_use)
    if clashes:
        raise AgentError(
            ErrorCode.CAMERA_IN_USE,
            f"Camera(s) {', '.join(clashes)} are already read by another session; stop "
            "it first, or set [cameras] allow_shared = true.",
            status=409,
            details={"cameraIds": clashes},
        )
