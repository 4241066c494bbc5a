"""Which stream URLs a session/start command may name inline (``rtspUrl``).

A registry camera (``[cameras] registry``) is the site's own configuration and is always
allowed. An inline URL makes the box connect where the command says, so it must be:

- an IP address literal inside one of ``[cameras] allowed_networks`` (default: loopback
  and the private ranges a school network uses), any camera scheme, port and path; or
- under one of ``[cameras] allowed_urls``: same scheme, host and port, and a path under
  the entry's path by whole segments (the callback allowlist's rules, ``agent.allowlist``,
  with camera schemes and the camera's credentials allowed).

Host names are never resolved to be matched against the networks (the name could
resolve elsewhere by the time the stream is opened): a camera named by host name needs an
``allowed_urls`` entry. HTTP redirects are not followed when a stream is opened
(``agent.camera.video_source``), so the checked URL is the one read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from agent.allowlist import check_under, parse_url
from agent.config import CamerasConfig
from agent.errors import AgentError, ErrorCode
from agent.redaction import redact_url

CAMERA_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CameraUrlError(AgentError, ValueError):
    """A camera URL the agent may not open; the message says why and what to change."""

    def __init__(self, reason: str, *, status: int = 422) -> None:
        super().__init__(ErrorCode.CAMERA_URL_NOT_ALLOWED, reason, status=status)


def literal_address(host: str) -> IpAddress | None:
    """The IP address a host part names literally (None for a host name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address


def in_networks(url: str, networks: Iterable[str]) -> bool:
    """Whether ``url``'s host is an IP address literal inside one of ``networks``."""
    host = parse_url(url, ports=CAMERA_PORTS, allow_userinfo=True, error=CameraUrlError).hostname
    address = literal_address(host or "")
    if address is None:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def check_inline_camera_url(camera_id: str, url: str, cameras: CamerasConfig) -> None:
    """Raise :class:`CameraUrlError` (422) unless the inline ``url`` of camera
    ``camera_id`` is allowed by ``[cameras] allowed_networks`` or ``allowed_urls``."""
    url = url.strip()
    try:
        if in_networks(url, cameras.allowed_networks):
            return
        check_under(
            url,
            cameras.allowed_urls,
            ports=CAMERA_PORTS,
            allow_userinfo=True,
            error=CameraUrlError,
            refusal="is outside [cameras] allowed_networks and allowed_urls",
        )
    except CameraUrlError as exc:
        raise CameraUrlError(
            f"Camera {camera_id}: rtspUrl {redact_url(url)} {exc.message}; name a camera of "
            "[cameras] registry, or add its network to [cameras] allowed_networks or its "
            "URL to [cameras] allowed_urls."
        ) from exc
