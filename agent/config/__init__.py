"""The agent's configuration: frozen pydantic models loaded once from TOML and environment.

Precedence (highest first): environment variables ``AGENT_<SECTION>__<KEY>``, then the TOML
file, then the defaults (in :mod:`agent.config.sections`). Secrets (passwords, API keys)
are never read from the TOML file: they come from environment variables or from files named
by ``*_file`` settings (systemd ``LoadCredential=`` puts them under
``$CREDENTIALS_DIRECTORY``). Every file the configuration names is read (or, for TLS
files, checked and loaded) while it is loaded (:mod:`agent.config.secrets`), so
:func:`load_config` reports every problem at once, each by key path, and nothing reads
those files later.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.config.cameras import AnalysisConfig, CameraEntry, CamerasConfig
from agent.config.mqtt import MqttConfig
from agent.config.recognition import RecognitionConfig
from agent.config.secrets import SecretFile, secret_value
from agent.config.sections import (
    AuthConfig,
    CallbackConfig,
    EnrollmentConfig,
    ExecutionProvider,
    LoggingConfig,
    MetricsConfig,
    ModelsConfig,
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
    "SecretFile",
    "Section",
    "SiteConfig",
    "StorageConfig",
    "WebUiConfig",
    "api_keys",
    "config_warnings",
    "load_config",
    "masked_dump",
    "secret_value",
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
# Secrets found in the TOML file by the load in progress, reported with every other error.
_toml_secrets: ContextVar[list[tuple[str, str]] | None] = ContextVar(
    "agent_config_toml_secrets", default=None
)


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file chosen by :func:`load_config`; secrets in it are left out and
    recorded as errors (all of them), so the rest is still validated."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = _toml_path.get()
        if path is None:
            return {}
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        found = _toml_secrets.get()
        for section, key in sorted(SECRET_KEYS):
            table = data.get(section)
            if isinstance(table, dict) and key in table:
                del table[key]  # never validated, so never echoed in another error
                if found is not None:
                    found.append(
                        (
                            f"{section}.{key}",
                            "secrets are not read from the config file; set "
                            f"{ENV_PREFIX}{section.upper()}__{key.upper()} or "
                            f"{section}.{key}_file",
                        )
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
    secrets: list[tuple[str, str]] = []
    tokens = (_toml_path.set(path), _toml_secrets.set(secrets))
    try:
        config = AgentConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"{path} is not valid TOML: {exc}")]) from exc
    except ValidationError as exc:
        errors = [
            # "Value error, " is pydantic's wrapping of our validators' messages: noise here.
            (_key_path(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors(include_url=False)
        ]
        raise ConfigError(secrets + errors) from exc
    finally:
        _toml_path.reset(tokens[0])
        _toml_secrets.reset(tokens[1])
    if secrets:
        raise ConfigError(secrets)
    return config


def api_keys(cfg: AuthConfig) -> list[str]:
    """The accepted command API keys (:meth:`AuthConfig.keys`); empty means none set."""
    return cfg.keys()


def config_warnings(config: AgentConfig) -> list[tuple[str, str]]:
    """Problems that do not stop the agent but make it useless or unsafe, by key path."""
    warnings = []
    if not api_keys(config.auth):
        warnings.append(
            (
                "auth.api_keys",
                f"no API key is set ({ENV_PREFIX}AUTH__API_KEYS or auth.api_keys_file, "
                "or the file is empty): every command will be refused with 401",
            )
        )
    mqtt = config.mqtt.exposure_warning()
    if mqtt is not None:
        warnings.append(("mqtt", mqtt))
    return warnings


def masked_dump(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret replaced by ``***``."""
    data = config.model_dump(mode="json")
    for section, key in SECRET_KEYS:
        if data.get(section, {}).get(key) is not None:
            data[section][key] = "***"
    return data
