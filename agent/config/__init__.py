"""The agent's configuration: frozen pydantic models loaded once from TOML and environment.

Precedence (highest first): environment variables ``AGENT_<SECTION>__<KEY>``, then the TOML
file, then the defaults (in :mod:`agent.config.sections`). Secrets (passwords, API keys)
are never read from the TOML file: they come from environment variables or from files named
by ``*_file`` settings
(systemd ``LoadCredential=`` puts them under ``$CREDENTIALS_DIRECTORY``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.config.cameras import AnalysisConfig, CameraEntry, CamerasConfig
from agent.config.sections import (
    AuthConfig,
    CallbackConfig,
    EnrollmentConfig,
    ExecutionProvider,
    LoggingConfig,
    MetricsConfig,
    ModelsConfig,
    MqttConfig,
    RecognitionConfig,
    RuntimeConfig,
    Section,
    SiteConfig,
    StorageConfig,
    WebUiConfig,
)
from agent.errors import AgentError, ErrorCode

__all__ = [
    "SECRET_KEYS",
    "AgentConfig",
    "AnalysisConfig",
    "AuthConfig",
    "CallbackConfig",
    "CameraEntry",
    "CamerasConfig",
    "ConfigError",
    "EnrollmentConfig",
    "ExecutionProvider",
    "LoggingConfig",
    "MetricsConfig",
    "ModelsConfig",
    "MqttConfig",
    "RecognitionConfig",
    "RuntimeConfig",
    "Section",
    "SiteConfig",
    "StorageConfig",
    "WebUiConfig",
    "api_keys",
    "load_config",
    "masked_dump",
    "read_secret",
]

ENV_PREFIX = "AGENT_"


SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("auth", "api_keys"),
        ("mqtt", "password"),
        ("callback", "api_key"),
        ("webui", "password"),
    }
)
"""(section, key) pairs that must never be written in the TOML file."""

_toml_path: ContextVar[Path | None] = ContextVar("agent_config_toml", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file chosen by :func:`load_config` (and rejects secrets in it)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = _toml_path.get()
        if path is None:
            return {}
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        for section, key in SECRET_KEYS:
            table = data.get(section)
            if isinstance(table, Mapping) and key in table:
                raise ConfigError(
                    [
                        (
                            f"{section}.{key}",
                            "secrets are not read from the config file; set "
                            f"{ENV_PREFIX}{section.upper()}__{key.upper()} or "
                            f"{section}.{key}_file",
                        )
                    ]
                )
        return data


class AgentConfig(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    site: SiteConfig = Field(default_factory=SiteConfig, description="Site identity.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model packs.")
    recognition: RecognitionConfig = Field(
        default_factory=RecognitionConfig, description="Detection and matching."
    )
    enrollment: EnrollmentConfig = Field(
        default_factory=EnrollmentConfig, description="Enrollment photo rules."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Command API keys.")
    callback: CallbackConfig = Field(default_factory=CallbackConfig, description="Callbacks.")
    cameras: CamerasConfig = Field(default_factory=CamerasConfig, description="Cameras.")
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig, description="Analysis capacity shared by cameras."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Runtime limits.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="State on disk.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Local metrics and status endpoint."
    )
    webui: WebUiConfig = Field(
        default_factory=WebUiConfig, description="The technician's status page."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class ConfigError(AgentError):
    """The configuration is invalid; ``errors`` lists ``(key path, problem)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(
            ErrorCode.CONFIG_INVALID,
            "; ".join(f"{path}: {problem}" for path, problem in errors),
            details={"errors": [{"path": path, "problem": problem} for path, problem in errors]},
        )
        self.errors = errors


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def load_config(path: Path | None = None) -> AgentConfig:
    """Load the configuration from ``path`` (optional) and the environment.

    Raises :class:`ConfigError` with one entry per problem, keyed by dotted path.
    """
    if path is not None and not path.is_file():
        raise ConfigError([("(file)", f"config file {str(path)!r} does not exist")])
    token = _toml_path.set(path)
    try:
        return AgentConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"{path} is not valid TOML: {exc}")]) from exc
    except ValidationError as exc:
        raise ConfigError(
            [(_key_path(err["loc"]), err["msg"]) for err in exc.errors(include_url=False)]
        ) from exc
    finally:
        _toml_path.reset(token)


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """Return a secret from its direct value or, failing that, from its file."""
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if file is not None:
        # An empty file means "not set", never an empty password.
        return file.read_text(encoding="utf-8").strip() or None
    return None


def api_keys(cfg: AuthConfig) -> list[str]:
    """The accepted command API keys (comma- or line-separated); empty means none set."""
    raw = read_secret(cfg.api_keys, cfg.api_keys_file) or ""
    return [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]


def masked_dump(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret replaced by ``***``."""
    data = config.model_dump(mode="json")
    for section, key in SECRET_KEYS:
        if data.get(section, {}).get(key) is not None:
            data[section][key] = "***"
    return data
