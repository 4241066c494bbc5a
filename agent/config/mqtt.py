"""The ``[mqtt]`` section: the broker connection, its secrets and TLS files, and topics.

Its TLS context is built while the configuration is loaded: a missing or malformed CA,
certificate or key fails ``check-config`` and ``run`` at once, and the MQTT link reuses
the context on every connection instead of reading the files again.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from agent.config.hosts import is_loopback
from agent.config.secrets import ReadableFile, SecretFile, secret_value
from agent.config.sections import Section
from agent.errors import ErrorCode


class CaBundle(SecretFile):
    """The CA bundle (PEM) that verifies the broker, read and parsed at load. Not a secret,
    but held like one: in memory, shown by its path only."""

    max_bytes = 4 * 1024 * 1024  # the whole system bundle is ~200 KiB

    @classmethod
    def check(cls, path: Path, value: str | None) -> None:
        """Refuse a file that holds no usable certificate."""
        try:
            ssl.create_default_context(cadata=value or "")
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"file {str(path)!r} is not a PEM CA bundle: {exc}") from None


class MqttConfig(Section):
    """The MQTT broker connection and topics."""

    # Built from the TLS files while the config is loaded, so a bad file fails the load.
    _tls_context: ssl.SSLContext | None = PrivateAttr(default=None)

    host: str = Field("127.0.0.1", min_length=1, max_length=253, description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    client_id: str = Field(
        "",
        max_length=128,
        description="Client id; empty = 'edge-agent-<site id>'. Must be stable for the "
        "broker to keep the session across reconnects.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="'auto' tries MQTT 5 first and falls back to 3.1.1."
    )
    topic_prefix: str = Field(
        "attendance",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="Topics are <prefix>/<site id>/...",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=7 * 24 * 3600,
        description="How long the broker keeps the agent's subscriptions and queued commands "
        "while it is offline.",
    )
    username: str | None = Field(None, max_length=256, description="Broker user name.")
    password: SecretStr | None = Field(
        None, description="Broker password (environment AGENT_MQTT__PASSWORD only)."
    )
    password_file: SecretFile | None = Field(
        None, description="File holding the broker password (read when the config is loaded)."
    )
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: CaBundle | None = Field(
        None,
        description="CA bundle for the broker's certificate (PEM; read when the config is "
        "loaded). None: the system's CAs.",
    )
    cert_file: ReadableFile | None = Field(
        None, description="Client certificate (mutual TLS, PEM)."
    )
    key_file: ReadableFile | None = Field(None, description="Client private key (mutual TLS, PEM).")
    reconnect_min_s: float = Field(1.0, ge=0.1, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, ge=1, le=600, description="Longest reconnect delay.")
    max_payload_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Larger command payloads are refused with 422.",
    )
    unauthenticated_reply_topics: tuple[str, ...] = Field(
        (),
        max_length=32,
        description="MQTT topic filters a request WITHOUT a valid key may name as its v5 "
        "response topic for its 401; elsewhere the 401 goes to <prefix>/<site>/reply (an "
        "anonymous sender must not make the agent publish where it likes). Either way the "
        "401 echoes the request's requestId.",
    )
    max_queued_commands: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Command messages waiting to be handled at most; more are discarded "
        "unanswered (logged) while the agent is flooded.",
    )
    reply_cache_s: int = Field(
        86400,
        ge=60,
        le=30 * 86400,
        description="How long a reply is kept to answer a redelivered requestId again.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.tls:
            self._tls_context = self._load_tls_context()
        return self

    def _load_tls_context(self) -> ssl.SSLContext:
        """The TLS context, built (its files read) once, while the config is loaded."""
        try:
            # The CA from memory (read and checked with its key); ssl reads the client
            # certificate and key itself, here, once.
            ca = self.ca_file.get_secret_value() if self.ca_file else None
            context = ssl.create_default_context(cadata=ca)
            if self.cert_file and self.key_file:
                # An encrypted key is refused, not prompted for on a terminal (a service
                # has none, and check-config must not hang).
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file), password=lambda: b""
                )
        except (OSError, ssl.SSLError) as exc:
            # ssl names no file: say which ones were used (paths only, never content).
            raise ValueError(
                f"the client certificate and key (cert_file={self.cert_file}, "
                f"key_file={self.key_file}) cannot be used (PEM, matching each other, the key "
                f"not encrypted): {exc}"
            ) from None
        return context

    def password_value(self) -> str | None:
        """The broker password: the environment's, else the file's (read at load)."""
        return secret_value(self.password, self.password_file)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context built at load (None without ``tls``)."""
        return self._tls_context

    def effective_client_id(self, site_id: str) -> str:
        """The client id sent to the broker."""
        return self.client_id or f"edge-agent-{site_id}"

    def exposure_warning(self) -> str | None:
        """``MQTT_INSECURE: ...`` when the broker is reached off loopback with neither TLS
        nor a login: anyone on that network can read the rosters' embeddings and the API
        keys in clear. None otherwise."""
        if self.tls or self.username or is_loopback(self.host):
            return None
        return (
            f"{ErrorCode.MQTT_INSECURE}: the broker {self.host}:{self.port} is not on this "
            "machine and MQTT uses neither TLS nor a login: rosters, embeddings and API keys "
            "cross the network in clear. Set [mqtt] tls = true (with ca_file) and a "
            "username with password_file (deploy/install.sh offers both)"
        )
