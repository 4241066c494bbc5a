"""Camera sections of the configuration: the site's cameras and how they are read
(``[cameras]``), and how the box's analysis capacity is shared by them (``[analysis]``)."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator

from agent.config.secrets import SecretFile
from agent.config.sections import Section

# Loopback and the private ranges (RFC 1918, IPv6 unique local): where a school's cameras are.
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
CAMERA_SCHEMES = ("rtsp", "rtsps", "http", "https")


class CameraEntry(Section):
    """A camera known to the site, which session/start may name by id only."""

    id: str = Field(min_length=1, max_length=128, description="Camera id.")
    name: str = Field("", max_length=128, description="Display name.")
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Stream URL without credentials (rtsp://, http://, file://, or a device "
        "index such as 0).",
    )
    credentials_file: SecretFile | None = Field(
        None,
        description="File holding 'user:password' for the stream (kept out of config.toml; "
        "systemd LoadCredential= fits); read when the config is loaded.",
    )

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"{url!r} is not a URL") from exc
        if parts.username or parts.password:
            raise ValueError("put the camera's user:password in credentials_file, not in the URL")
        return url

    def stream_url(self) -> str:
        """The URL to open, with the credentials from ``credentials_file`` when set."""
        secret = self.credentials_file.get_secret_value() if self.credentials_file else None
        if not secret:
            return self.url
        parts = urlsplit(self.url)
        user, _, password = secret.partition(":")
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return urlunsplit(parts._replace(netloc=f"{auth}@{parts.netloc}"))


class CamerasConfig(Section):
    """The site's cameras and how they are read."""

    open_timeout_s: float = Field(
        5.0, ge=0.5, le=60, description="Longest wait for a stream to open."
    )
    read_timeout_s: float = Field(
        2.0, ge=0.2, le=60, description="Longest wait inside one read (OpenCV FFmpeg option)."
    )
    max_frame_age_s: float = Field(
        3.0,
        ge=0.5,
        le=120,
        description="No usable video frame for this long = the stream is hung. Usable: "
        "after the stream's first keyframe (keep this above the cameras' keyframe "
        "interval), video only (audio packets do not count).",
    )
    reconnect_attempts: int = Field(
        3, ge=1, le=100, description="Reconnect attempts before a camera is dead."
    )
    reconnect_interval_s: float = Field(
        2.0, ge=0.0, le=120, description="Pause between reconnect attempts."
    )
    probe_min_s: float = Field(
        2.0,
        ge=0.1,
        le=600,
        description="Re-probe interval of a dead camera during probe_fast_for_s after its "
        "loss (a rebooted camera is back LIVE within this); then it doubles each time.",
    )
    probe_max_s: float = Field(30.0, ge=0.1, le=3600, description="Longest re-probe interval.")
    probe_fast_for_s: float = Field(
        180.0,
        ge=0,
        le=86_400,
        description="How long after a camera is lost it is re-probed every probe_min_s "
        "before backing off (an IP camera reboot takes 30-90 s).",
    )
    all_dead_grace_s: float = Field(
        180.0,
        ge=0,
        le=86_400,
        description="When every camera of a session is down, keep probing this long before "
        "the session stops with ALL_CAMERAS_FAILED (0: stop at once).",
    )
    analysis_fps: float = Field(
        4.0, gt=0, le=30, description="Analyses per second per camera (at most)."
    )
    idle_analysis_fps: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Analyses per second while no face is in view (saves CPU in empty "
        "rooms); at most analysis_fps.",
    )
    decoder: Literal["auto", "pyav", "opencv"] = Field(
        "auto",
        description="Library reading streams. 'auto': PyAV (decodes only the frames "
        "analyses need) for URLs, OpenCV for device indexes; 'opencv' decodes every frame.",
    )
    ffmpeg_options: str = Field(
        "rtsp_transport;tcp|analyzeduration;100000|probesize;32768",
        max_length=1024,
        description="OPENCV_FFMPEG_CAPTURE_OPTIONS: RTSP over TCP and a fast open (measured "
        "0.13 s instead of 2.8 s).",
    )
    max_frame_pixels: int = Field(
        4096 * 2160,
        ge=320 * 240,
        le=16384 * 16384,
        description="Largest frame accepted, in pixels (default: 4096x2160, 4K). A stream "
        "over it is refused before decoding where the stream says its size (the open; a "
        "JPEG's header; FFmpeg's decoder refuses it otherwise) with CAMERA_FRAME_TOO_LARGE, "
        "also after a resolution change in the middle of the stream: a decoded frame costs "
        "its size in memory several times over.",
    )

    allowed_networks: tuple[str, ...] = Field(
        PRIVATE_NETWORKS,
        max_length=256,
        description="An inline camera URL (session/start rtspUrl) whose host is an IP "
        "address in one of these networks (CIDR) is allowed, any port and path. Default: "
        "loopback and the private ranges. Host names are not resolved for this: they need "
        "an allowed_urls entry. Registry cameras are always allowed.",
    )
    allowed_urls: tuple[str, ...] = Field(
        (),
        max_length=256,
        description="Inline camera URLs allowed besides allowed_networks: same scheme, host "
        "and port as an entry and a path under its path by whole segments (e.g. "
        "'rtsp://cameras.school.lan:554/live'). Other inline URLs are refused "
        "(CAMERA_URL_NOT_ALLOWED).",
    )
    allow_shared: bool = Field(
        False,
        description="Let two sessions read the same camera at once (each opens its own "
        "stream). Off: a session naming a camera in use is refused with CAMERA_IN_USE.",
    )
    registry: tuple[CameraEntry, ...] = Field(
        (), max_length=256, description="Cameras that commands may name by id."
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network such as '10.0.0.0/8'") from exc
        return networks

    @field_validator("allowed_urls")
    @classmethod
    def _camera_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)  # a ValueError is reported as this key's error too
            if parts.scheme not in CAMERA_SCHEMES or not parts.hostname:
                raise ValueError(f"{url!r} must be an rtsp(s):// or http(s):// URL with a host")
            if "@" in parts.netloc or ".." in parts.path:
                raise ValueError(f"{url!r} must have no user information and no '..' segment")
        return urls

    @field_validator("registry")
    @classmethod
    def _unique_ids(cls, registry: tuple[CameraEntry, ...]) -> tuple[CameraEntry, ...]:
        ids = [c.id for c in registry]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be unique: {', '.join(duplicates)}")
        return registry

    @model_validator(mode="after")
    def _idle_not_faster(self) -> CamerasConfig:
        # An empty room analysed faster than a busy one would be a typo, not a wish: say
        # so at load rather than quietly running the idle rate at analysis_fps.
        if self.idle_analysis_fps > self.analysis_fps:
            raise ValueError(
                f"idle_analysis_fps ({self.idle_analysis_fps:g}) must not exceed "
                f"analysis_fps ({self.analysis_fps:g}): an empty room is analysed at most "
                "as often as a busy one"
            )
        return self

    def find(self, camera_id: str) -> CameraEntry | None:
        """The registered camera with this id, if any."""
        return next((c for c in self.registry if c.id == camera_id), None)


class AnalysisConfig(Section):
    """How the box's analysis capacity is shared by all cameras (agent.session.scheduler)."""

    max_analyses_per_s: float = Field(
        40.0,
        ge=0.5,
        le=10_000,
        description="Analyses per second over all cameras at most. Cameras with faces not "
        "yet recognised go first; empty rooms and settled ones (everyone in view "
        "recognised) are shed first.",
    )
    max_embeddings_per_s: float = Field(
        90.0,
        ge=1.0,
        le=10_000,
        description="Faces embedded per second over all cameras at most (11 ms of one core "
        "each on the 2-core test box: 90/s is about one core); faces with the fewest votes "
        "first, the rest wait for the next analysis.",
    )
    full_decode_mpx_s: float = Field(
        40.0,
        ge=0.0,
        le=100_000,
        description="Megapixels per second that may be decoded frame by frame, over all "
        "cameras (a 1080p 15 fps camera is 31 Mpx/s, ~0.19 of a core). Cameras beyond it "
        "decode only the keyframes their analyses need (one analysis per keyframe "
        "interval at most). Cameras with unrecognised faces get it first.",
    )
    fine_detect_cores: float = Field(
        0.25,
        ge=0.0,
        le=64,
        description="CPU (in cores) that full-resolution detection may use over all "
        "cameras: regions around small candidates and sweep tiles (agent.vision.coverage). "
        "Cameras ask in priority order; a camera whose session still misses roster "
        "students sweeps, one whose room is settled rarely or never. 0: shrunk-frame "
        "detection only (faces under ~36 px at 1080p are then missed).",
    )
    min_analysis_fps: float = Field(
        0.2,
        gt=0,
        le=30,
        description="Every live camera is analysed at least this often, however busy the "
        "box, so a newcomer is noticed.",
    )
