"""The configuration's sections: frozen pydantic models, every field with a default, a
description and bounds. Loading and precedence live in :mod:`agent.config`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.config.secrets import SecretFile, secret_value

ExecutionProvider = Literal[
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
]


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SiteConfig(Section):
    """Which site this box serves and how it tells time."""

    id: str = Field(
        "site-1",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Site id; part of every MQTT topic, so letters, digits, '_', '.', '-' only.",
    )
    timezone: str = Field(
        "Asia/Ho_Chi_Minh",
        description="IANA time zone used for timestamps sent to the backend.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value


class ModelsConfig(Section):
    """Where model packs live and how ONNX Runtime runs them."""

    dir: Path = Field(
        Path("models"),
        description="Folder holding one sub-folder per model pack (relative to the working dir).",
    )
    pack: str = Field(
        "",
        max_length=128,
        description=(
            "Active pack (sub-folder name). Empty: the only pack, or the newest valid one."
        ),
    )
    providers: tuple[ExecutionProvider, ...] = Field(
        ("CPUExecutionProvider",),
        min_length=1,
        description="ONNX Runtime execution providers in order of preference.",
    )
    intra_op_threads: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Threads per inference session. 1 is fastest on small CPUs when several "
            "cameras run in parallel workers (measured)."
        ),
    )
    watch: bool = Field(
        True, description="Watch the folder and swap in new or changed packs while running."
    )
    settle_s: float = Field(
        2.0,
        ge=0.1,
        le=600,
        description="A pack is considered once its files have not changed for this long.",
    )
    tensorrt_cache_dir: Path = Field(
        Path("data/tensorrt-cache"),
        description="Where TensorRT keeps built engines (used only with that provider).",
    )
    optimize_prelu: bool = Field(
        True,
        description=(
            "Rewrite PRelu as Max(x, a*x) at load time when exact (all slopes <= 1); "
            "bit-identical embeddings, ~40% faster on CPU."
        ),
    )


class EnrollmentConfig(Section):
    """Limits and quality rules for enrollment photos (embedding generation)."""

    max_photo_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="Largest photo accepted."
    )
    max_photo_pixels: int = Field(
        40_000_000,
        ge=10_000,
        le=200_000_000,
        description="Largest width*height accepted (guards against decompression bombs).",
    )
    significant_face_ratio: float = Field(
        0.25,
        ge=0.01,
        le=1.0,
        description=(
            "A face counts as a second person only if its box area is at least this "
            "fraction of the largest face's area; smaller background faces are ignored."
        ),
    )
    min_inter_eye_px: float = Field(
        20.0, ge=4.0, le=500.0, description="Smallest distance between the eyes, in pixels."
    )
    min_sharpness: float = Field(
        40.0,
        ge=0.0,
        le=10_000.0,
        description="Smallest variance of the Laplacian of the aligned 112x112 face (blur).",
    )
    max_yaw_deg: float = Field(40.0, ge=5.0, le=90.0, description="Largest head turn, degrees.")
    max_pitch_deg: float = Field(35.0, ge=5.0, le=90.0, description="Largest nod, degrees.")
    max_roll_deg: float = Field(30.0, ge=5.0, le=90.0, description="Largest head tilt, degrees.")
    min_brightness: float = Field(
        40.0, ge=0.0, le=255.0, description="Darkest accepted mean face brightness (0-255)."
    )
    max_brightness: float = Field(
        220.0, ge=0.0, le=255.0, description="Brightest accepted mean face brightness (0-255)."
    )
    min_det_score: float = Field(
        0.7, ge=0.0, le=1.0, description="Smallest detector score for an enrollment face."
    )


class CallbackConfig(Section):
    """Where recognition results may be sent, and the key sent with them."""

    allowed_urls: tuple[str, ...] = Field(
        ("http://127.0.0.1/", "http://localhost/"),
        max_length=64,
        description="A session's callbackUrl must have the scheme, host and port of one of "
        "these and lie under its path by whole segments (agent.allowlist). Biometric results "
        "go nowhere else; checked at start and again before every delivery.",
    )
    api_key: SecretStr | None = Field(
        None, description="X-API-Key sent with callbacks (environment AGENT_CALLBACK__API_KEY)."
    )
    api_key_file: SecretFile | None = Field(
        None, description="File holding the callback API key (read when the config is loaded)."
    )
    timeout_s: float = Field(10.0, ge=0.5, le=120, description="Total time for one POST.")
    attempts_per_round: int = Field(
        3, ge=1, le=10, description="POSTs per round before backing off."
    )
    first_retry_s: float = Field(
        1.0, ge=0.01, le=60, description="Wait after the first failed POST; doubles (1, 2, 4 s)."
    )
    retry_max_s: float = Field(
        300.0, ge=0.1, le=3600, description="Longest wait between rounds (capped backoff)."
    )
    refused_rounds: int = Field(
        3,
        ge=1,
        le=100,
        description="Rounds an event is tried while the callback answers 401, 403 or 404 "
        "(a key being rotated, a route being deployed) before it is a dead letter; each "
        "such round is one POST, rounds back off as for 5xx (1: dead letter at once).",
    )
    autostop_failures: int = Field(
        10,
        ge=0,
        le=10_000,
        description="Stop a session after this many consecutive failed delivery rounds "
        "(all attempts_per_round POSTs of an event failing) or dead letters (0: never). "
        "With the default backoff, 10 rounds take over 13 minutes.",
    )
    autostop_seconds: float = Field(
        900.0,
        ge=0,
        le=86_400,
        description="Stop a session after this long without a successful POST while "
        "failing (0: never). 900 s weathers a 10-minute backend outage; 120 s (with "
        "autostop_failures = 10) is the strict original setting.",
    )
    max_pending_events: int = Field(
        100_000,
        ge=10,
        le=10_000_000,
        description="Undelivered events kept at most; past it "
        "new events are refused (logged, in status and metrics), old ones are never dropped.",
    )
    delivered_retention_s: float = Field(
        86_400.0, ge=0, le=30 * 86_400, description="How long delivered events stay in the outbox."
    )
    dead_letter_crop_retention_s: float = Field(
        7 * 86_400.0,
        ge=1,
        le=30 * 86_400,
        description="How long a dead letter keeps its face crop (faceJpeg), from the event's "
        "creation; then the crop is deleted (checked every half of this, at most hourly) and "
        "the event stays a dead letter without it.",
    )

    def api_key_value(self) -> str | None:
        """The X-API-Key to send: the environment's, else the file's (read at load)."""
        return secret_value(self.api_key, self.api_key_file)

    @field_validator("allowed_urls")
    @classmethod
    def _absolute_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an absolute http(s) URL")
            if "@" in parts.netloc or ".." in parts.path:
                raise ValueError(f"{url!r} must have no user information and no '..' segment")
        return urls


class RuntimeConfig(Section):
    """Process-wide limits."""

    inference_workers: int = Field(
        2, ge=1, le=32, description="Threads running ONNX inference (bounded pool)."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=1.0, le=120.0, description="Longest clean shutdown before exiting anyway."
    )
    max_sessions: int = Field(
        32, ge=1, le=1024, description="Sessions running at once; more are refused (409)."
    )
    max_cameras: int = Field(
        64,
        ge=1,
        le=1024,
        description="Cameras open at once over all sessions; a start past it is refused (409).",
    )
    task_restart_limit: int = Field(
        5,
        ge=0,
        le=1000,
        description="A background task (MQTT link, delivery scanner, model watcher...) that "
        "fails more often than this within task_restart_window_s makes the agent exit "
        "non-zero, for systemd to restart it.",
    )
    task_restart_window_s: float = Field(
        300.0, ge=1.0, le=86_400.0, description="Window of task_restart_limit."
    )
    task_backoff_min_s: float = Field(
        1.0, ge=0.01, le=60.0, description="First pause before a failed task is restarted."
    )
    task_backoff_max_s: float = Field(
        30.0, ge=0.01, le=3600.0, description="Longest pause before a failed task is restarted."
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> RuntimeConfig:
        # Said at load rather than quietly raising the longest pause to the first one.
        if self.task_backoff_max_s < self.task_backoff_min_s:
            raise ValueError(
                f"task_backoff_max_s ({self.task_backoff_max_s:g}) must not be below "
                f"task_backoff_min_s ({self.task_backoff_min_s:g})"
            )
        return self


class StorageConfig(Section):
    """Where the agent keeps its state."""

    data_dir: Path = Field(
        Path("data"), description="Writable folder for the SQLite databases and runtime state."
    )
    busy_wait_s: float = Field(
        300.0,
        ge=1.0,
        le=3600.0,
        description="How long a write waits while another process holds the state file's "
        "lock (a backup, the CLI) before the event or command fails with STORAGE_BUSY.",
    )


class LoggingConfig(Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level written."
    )
    format: Literal["text", "json"] = Field(
        "text", description="'text': key=value lines; 'json': one JSON object per line."
    )


class AuthConfig(Section):
    """Secrets for the command API; values come from the environment or files only."""

    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys accepted on commands (env AGENT_AUTH__API_KEYS).",
    )
    api_keys_file: SecretFile | None = Field(
        None,
        description="File holding the API keys, one per line (read when the config is loaded).",
    )

    def keys(self) -> list[str]:
        """The accepted command API keys (comma- or line-separated, from the environment,
        else the file read at load); empty means none set."""
        raw = secret_value(self.api_keys, self.api_keys_file) or ""
        return [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]


class MetricsConfig(Section):
    """The local HTTP endpoint: Prometheus metrics, status JSON, health."""

    enabled: bool = Field(True, description="Serve /metrics, /status and /healthz.")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        max_length=253,
        description="Listen address (localhost only "
        "by default; status shows session and camera ids).",
    )
    port: int = Field(9108, ge=0, le=65535, description="Listen port (0: any free port).")


class WebUiConfig(Section):
    """The technician's status page, served on the ``[metrics]`` address and port."""

    enabled: bool = Field(
        True,
        description="Serve the status page at / (needs [metrics] enabled). On an address "
        "other than loopback it is served only with a password.",
    )
    password: SecretStr | None = Field(
        None,
        description="Password of the page (HTTP Basic, any user name, or 'Authorization: "
        "Bearer'); environment AGENT_WEBUI__PASSWORD only. Required off loopback.",
    )
    password_file: SecretFile | None = Field(
        None, description="File holding the page's password (read when the config is loaded)."
    )
    face_labels: Literal["id", "code", "name"] = Field(
        "id",
        description="What recognised faces are labelled with on snapshots: the student id, "
        "the roster's student code, or the student's name (personal data: only where the "
        "school allows it).",
    )
    camera_test_allowed_urls: tuple[str, ...] = Field(
        (),
        max_length=64,
        description="Stream URLs the camera test may open besides the registry's cameras: "
        "same scheme, host and port as an entry and a path under its path by whole segments "
        "(e.g. 'rtsp://192.0.2.10:554/'). Empty: registry cameras only.",
    )
    camera_test_seconds: float = Field(
        2.0, ge=0.5, le=10.0, description="How long the camera test reads to measure the rate."
    )
    refresh_s: float = Field(
        2.0, ge=0.5, le=60.0, description="How often the open page fetches the agent's state."
    )
    snapshot_interval_s: float = Field(
        3.0, ge=1.0, le=60.0, description="How often the visible page fetches each snapshot."
    )
    snapshot_max_width: int = Field(
        800, ge=160, le=3840, description="Snapshots wider than this are scaled down (pixels)."
    )
    snapshot_jpeg_quality: int = Field(80, ge=30, le=95, description="JPEG quality of snapshots.")

    def password_value(self) -> str | None:
        """The page's password: the environment's, else the file's (read at load)."""
        return secret_value(self.password, self.password_file)

    @field_validator("camera_test_allowed_urls")
    @classmethod
    def _no_userinfo(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)  # a ValueError is reported as this key's error too
            if not parts.scheme or "@" in parts.netloc:
                raise ValueError(f"{url!r} must be an absolute URL without user:password@")
        return urls
