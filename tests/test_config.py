"""Configuration: defaults, TOML, environment overrides, errors by key path, secrets."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import (
    AgentConfig,
    ConfigError,
    api_keys,
    load_config,
    masked_dump,
    secret_value,
)
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    assert cfg.site.timezone == "Asia/Ho_Chi_Minh"
    assert cfg.models.providers == ("CPUExecutionProvider",)


def test_example_config_loads_and_documents_every_key() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.models.dir == Path("models")
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for section_name, field in AgentConfig.model_fields.items():
        assert f"[{section_name}]" in text, f"config.toml lacks section [{section_name}]"
        section = field.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key in section.model_fields:
            assert key in text, f"config.toml does not mention {section_name}.{key}"


def test_every_field_has_description_and_default() -> None:
    for section_name, field in AgentConfig.model_fields.items():
        section = field.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key, sub in section.model_fields.items():
            assert sub.description, f"{section_name}.{key} has no description"
            assert not sub.is_required(), f"{section_name}.{key} has no default"


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.site.id = "other"  # type: ignore[misc]


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, '[site]\nid = "from-toml"\n[recognition]\nmatch_threshold = 0.3\n')
    monkeypatch.setenv("AGENT_RECOGNITION__MATCH_THRESHOLD", "0.55")
    cfg = load_config(path)
    assert cfg.site.id == "from-toml"
    assert cfg.recognition.match_threshold == 0.55


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[models]\nfoo = 1\n", "models.foo", "Extra inputs"),
        ("[recognition]\ndet_long_side = 650\n", "recognition.det_long_side", "multiple of 32"),
        ("[recognition]\nmatch_threshold = 1.5\n", "recognition.match_threshold", "less than"),
        ("[models]\nintra_op_threads = 'two'\n", "models.intra_op_threads", "integer"),
        ("[site]\ntimezone = 'Mars/Olympus'\n", "site.timezone", "unknown time zone"),
        ("[site]\nid = 'a b'\n", "site.id", "pattern"),
        ("[models]\nproviders = ['GPU']\n", "models.providers.0", "Input should be"),
        ("[nonsense]\nx = 1\n", "nonsense", "Extra inputs"),
    ],
)
def test_errors_are_reported_by_key_path(
    tmp_path: Path, toml: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, toml))
    paths = dict(info.value.errors)
    assert key in paths, paths
    assert fragment in paths[key]


def test_idle_analysis_faster_than_busy_is_refused_by_key_path(tmp_path: Path) -> None:
    toml = "[cameras]\nanalysis_fps = 2.0\nidle_analysis_fps = 3.0\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, toml))
    assert info.value.errors == [
        (
            "cameras",
            "idle_analysis_fps (3) must not exceed analysis_fps (2): an empty room is "
            "analysed at most as often as a busy one",
        )
    ]
    equal = load_config(
        _write(tmp_path, "[cameras]\nanalysis_fps = 2.0\nidle_analysis_fps = 2.0\n")
    )
    assert equal.cameras.idle_analysis_fps == equal.cameras.analysis_fps


def test_task_backoff_below_its_first_pause_is_refused_by_key_path(tmp_path: Path) -> None:
    toml = "[runtime]\ntask_backoff_min_s = 5.0\ntask_backoff_max_s = 2.0\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, toml))
    assert info.value.errors == [
        ("runtime", "task_backoff_max_s (2) must not be below task_backoff_min_s (5)")
    ]


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "[models]\nfoo = 1\n[recognition]\ndet_threshold = 7\n"))
    assert {k for k, _ in info.value.errors} == {"models.foo", "recognition.det_threshold"}


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[site\nid=1"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_secret_in_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, '[auth]\napi_keys = "hunter2"\n'))
    ((key, problem),) = info.value.errors
    assert key == "auth.api_keys"
    assert "AGENT_AUTH__API_KEYS" in problem
    assert "hunter2" not in str(info.value)


def test_secret_from_environment_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_AUTH__API_KEYS", "hunter2")
    cfg = load_config(None)
    assert cfg.auth.api_keys is not None
    assert cfg.auth.api_keys.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg)
    assert masked_dump(cfg)["auth"]["api_keys"] == "***"


def _check_config(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli("check-config", *args, env=env, timeout=60)


def test_check_config_cli_prints_key_paths(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[models]\nintra_op_threads = 0\n[logging]\nlevel = 'LOUD'\n")
    result = _check_config(str(bad))
    assert result.returncode == 2
    assert "models.intra_op_threads" in result.stderr
    assert "logging.level" in result.stderr


def test_check_config_cli_masks_secrets() -> None:
    import os

    env = {**os.environ, "AGENT_AUTH__API_KEYS": "hunter2"}
    result = _check_config("config.toml", env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert '"api_keys": "***"' in result.stdout


def test_camera_credentials_stay_out_of_the_toml(tmp_path: Path) -> None:
    bad = _write(
        tmp_path,
        '[cameras]\nregistry = [{ id = "c1", url = "rtsp://admin:pw@192.0.2.1/s" }]\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    ((key, problem),) = info.value.errors
    assert key == "cameras.registry.0.url"
    assert "credentials_file" in problem
    assert "pw" not in problem
    secret = tmp_path / "cam-secret"
    secret.write_text("admin:p@ss word\n")
    good = _write(
        tmp_path,
        f'[cameras]\nregistry = [{{ id = "c1", url = "rtsp://192.0.2.1:554/s", '
        f'credentials_file = "{secret}" }}]\n',
    )
    entry = load_config(good).cameras.find("c1")
    assert entry is not None
    assert entry.stream_url() == "rtsp://admin:p%40ss%20word@192.0.2.1:554/s"


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any AGENT_ setting, plus ``extra``."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")} | extra


def test_every_named_file_is_read_at_load(tmp_path: Path) -> None:
    keys, cam, page = tmp_path / "api_keys", tmp_path / "cam", tmp_path / "page"
    keys.write_text("key-one\nkey-two\n")
    cam.write_text("admin:pw\n")
    page.write_text("page-pw\n")
    cfg = load_config(
        _write(
            tmp_path,
            f'[auth]\napi_keys_file = "{keys}"\n[webui]\npassword_file = "{page}"\n'
            f'[cameras]\nregistry = [{{ id = "c1", url = "rtsp://192.0.2.1/s", '
            f'credentials_file = "{cam}" }}]\n',
        )
    )
    for path in (keys, cam, page):
        path.unlink()  # the agent must never need them again
    assert api_keys(cfg.auth) == ["key-one", "key-two"]
    assert secret_value(cfg.webui.password, cfg.webui.password_file) == "page-pw"
    entry = cfg.cameras.find("c1")
    assert entry is not None and entry.stream_url() == "rtsp://admin:pw@192.0.2.1/s"
    shown = repr(cfg) + str(masked_dump(cfg))
    for secret in ("key-one", "pw@", "page-pw"):
        assert secret not in shown
    assert masked_dump(cfg)["auth"]["api_keys_file"] == str(keys)


def test_each_section_gives_its_resolved_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {name: tmp_path / name for name in ("keys", "callback", "mqtt", "page")}
    for name, path in files.items():
        path.write_text(f"{name}-from-file\n")
    cfg = load_config(
        _write(
            tmp_path,
            f'[auth]\napi_keys_file = "{files["keys"]}"\n'
            f'[callback]\napi_key_file = "{files["callback"]}"\n'
            f'[mqtt]\npassword_file = "{files["mqtt"]}"\n'
            f'[webui]\npassword_file = "{files["page"]}"\n',
        )
    )
    for path in files.values():
        path.unlink()  # resolved at load: nothing reads them again
    assert cfg.auth.keys() == api_keys(cfg.auth) == ["keys-from-file"]
    assert cfg.callback.api_key_value() == "callback-from-file"
    assert cfg.mqtt.password_value() == "mqtt-from-file"
    assert cfg.webui.password_value() == "page-from-file"
    shown = repr(cfg) + str(cfg) + str(cfg.model_dump()) + str(masked_dump(cfg))
    assert "from-file" not in shown
    monkeypatch.setenv("AGENT_CALLBACK__API_KEY", "callback-from-env")
    assert load_config(None).callback.api_key_value() == "callback-from-env"
    assert load_config(None).mqtt.password_value() is None


def test_missing_and_bad_files_are_errors_by_key_path(tmp_path: Path) -> None:
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    toml = (
        f'[auth]\napi_keys_file = "{tmp_path / "gone"}"\n'
        f'[callback]\napi_key_file = "{tmp_path}"\n'  # a folder, not a file
        f'[mqtt]\ntls = true\nca_file = "{bad_ca}"\npassword_file = "{tmp_path / "nope"}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, toml))
    errors = dict(info.value.errors)
    assert set(errors) == {
        "auth.api_keys_file",
        "callback.api_key_file",
        "mqtt.ca_file",
        "mqtt.password_file",
    }, errors
    assert "No such file" in errors["auth.api_keys_file"]
    assert "not a PEM CA bundle" in errors["mqtt.ca_file"]


def test_two_secrets_and_a_bad_value_are_all_reported(tmp_path: Path) -> None:
    toml = '[auth]\napi_keys = "hunter2"\n[mqtt]\npassword = "s3cret"\nport = 0\n'
    path = _write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [key for key, _ in info.value.errors] == ["auth.api_keys", "mqtt.password", "mqtt.port"]
    result = _check_config(str(path), env=_clean_env())
    assert result.returncode == 2
    for key in ("auth.api_keys", "mqtt.password", "mqtt.port"):
        assert f"  {key}: " in result.stderr, result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "s3cret" not in result.stderr + result.stdout


def test_missing_api_keys_file_fails_check_config_and_run_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[auth]\napi_keys_file = "{tmp_path / "api_keys"}"\n')
    checked = _check_config(str(path), env=_clean_env())
    assert checked.returncode == 2
    assert "auth.api_keys_file" in checked.stderr
    started = time.monotonic()
    ran = run_cli("run", "--config", str(path), env=_clean_env(), timeout=30)
    took = time.monotonic() - started
    assert ran.returncode == 2, ran.stderr
    assert took < 1.0, f"run took {took:.2f} s to refuse an invalid config"
    assert ran.stderr == checked.stderr  # the same messages
    assert not (tmp_path / "data").exists()


def test_check_config_warns_when_no_api_key_is_set(tmp_path: Path) -> None:
    path = _write(tmp_path, '[site]\nid = "w"\n')
    bare = _check_config(str(path), env=_clean_env())
    assert bare.returncode == 0, bare.stderr
    assert "Warning: auth.api_keys: no API key is set" in bare.stderr
    keyed = _check_config(str(path), env=_clean_env(AGENT_AUTH__API_KEYS="k1"))
    assert keyed.returncode == 0 and "Warning" not in keyed.stderr


def test_unusable_client_certificate_fails_the_load(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    toml = f'[mqtt]\ntls = true\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, toml))
    ((path, problem),) = info.value.errors
    assert path == "mqtt"  # a rule over two keys
    assert str(cert) in problem and str(key) in problem
    assert "cannot be used" in problem
