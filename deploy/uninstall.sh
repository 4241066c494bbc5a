#!/usr/bin/env bash
# Removes the edge attendance agent installed by deploy/install.sh.
#
#   sudo deploy/uninstall.sh            # program and unit; keeps config, credentials, data
#   sudo deploy/uninstall.sh --purge    # also /etc/edge-agent, /var/lib/edge-agent, the user
#   deploy/uninstall.sh --root DIR      # a staged install (no systemctl, no user)
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: uninstall.sh [--root DIR] [--purge]
  --root DIR   the root install.sh installed into (default /)
  --purge      also delete the configuration, the credentials, the data (outbox, model
               packs) and, on a real system, the edge-agent user
EOF
}

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'uninstall.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

root=/
purge=0
while (($#)); do
  case "$1" in
    --root)
      (($# >= 2)) || die "--root needs a folder"
      root=$2
      shift 2
      ;;
    --purge)
      purge=1
      shift
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

[ -d "$root" ] || die "--root $root is not a folder"
root=$(cd "$root" && pwd -P)
if [ "$root" = / ]; then
  real_system=1
  R=""
else
  real_system=0
  R=$root
fi
if ((real_system)) && [ "$(id -u)" != 0 ]; then
  die "uninstalling from / needs root: run it with sudo"
fi

unit=$R/etc/systemd/system/edge-agent.service
dropins=$R/etc/systemd/system/edge-agent.service.d
venv=$R/opt/edge-agent/venv
etc=$R/etc/edge-agent
data=$R/var/lib/edge-agent
service_user=edge-agent

if ((real_system)) && [ -d /run/systemd/system ]; then
  say "Stopping and disabling edge-agent"
  # Both succeed (with a message) when the unit is unknown or already stopped.
  systemctl disable --now edge-agent 2>&1 | sed 's/^/    /' || true
elif ((real_system)); then
  note "systemd is not running here: nothing to stop"
else
  note "--root $root: skipped systemctl"
fi

say "Removing the program and the unit"
rm -rf "$venv"
rmdir "$R/opt/edge-agent" 2>/dev/null || true
rm -f "$unit"
if ((purge)); then
  rm -rf "$dropins"
elif [ -d "$dropins" ]; then
  note "keeping local drop-ins in $dropins"
fi
if ((real_system)) && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl reset-failed edge-agent 2>/dev/null || true
fi

if ((purge)); then
  say "Purging configuration, credentials and data"
  rm -rf "$etc" "$data"
  if ((real_system)) && id -u "$service_user" >/dev/null 2>&1; then
    userdel "$service_user" || note "WARNING: could not delete the user $service_user"
  fi
else
  note "kept $etc (configuration and credentials) and $data (outbox, model packs);"
  note "delete them with: uninstall.sh --purge"
fi
say "Done"
