#!/usr/bin/env bash
# Install the linefleet edge agent on an edge box (Debian/Ubuntu, systemd).
#
#   sudo deploy/install-edge.sh                 # CPU box
#   sudo deploy/install-edge.sh --gpu           # NVIDIA box: onnxruntime-gpu
#   deploy/install-edge.sh --root /tmp/staging --no-start --no-user   # stage into a folder
#
# Idempotent: re-running upgrades the package and unit, and never overwrites an existing
# /etc/linefleet/agent.yaml or credentials.
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=/
EXTRA=edge
START=1
CREATE_USER=1
PIP_ARGS=()
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,10p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --gpu) EXTRA=edge-gpu; shift ;;
    --no-start) START=0; shift ;;
    --no-user) CREATE_USER=0; shift ;;
    --pip-arg) PIP_ARGS+=("$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

prefix="${ROOT%/}/opt/linefleet"
etc="${ROOT%/}/etc/linefleet"
unit_dir="${ROOT%/}/etc/systemd/system"

if [ "$CREATE_USER" = 1 ] && ! id linefleet >/dev/null 2>&1; then
  echo "creating system user linefleet"
  useradd --system --home-dir /var/lib/linefleet --shell /usr/sbin/nologin linefleet
  for group in video render; do
    getent group "$group" >/dev/null && usermod -aG "$group" linefleet || true
  done
fi

echo "installing linefleet[$EXTRA] into $prefix/venv"
install -d -m 0755 "$prefix"
"$PYTHON" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --upgrade pip
"$prefix/venv/bin/python" -m pip install -q ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$SOURCE[$EXTRA]"
install -m 0644 "$SOURCE/README.md" "$prefix/README.md"

install -d -m 0750 "$etc" "$etc/keys"
install -d -m 0700 "$etc/credentials"
if [ ! -e "$etc/agent.yaml" ]; then
  install -m 0640 "$SOURCE/deploy/agent.example.yaml" "$etc/agent.yaml"
  echo "wrote $etc/agent.yaml: edit it, then: edge-agent check-config --config /etc/linefleet/agent.yaml"
else
  echo "kept existing $etc/agent.yaml"
fi
for credential in s3-secret mqtt-client.key; do
  # LoadCredential= refuses to start the unit when a listed file is missing.
  [ -e "$etc/credentials/$credential" ] || install -m 0600 /dev/null "$etc/credentials/$credential"
done
install -d -m 0755 "$unit_dir"
install -m 0644 "$SOURCE/deploy/edge-agent.service" "$unit_dir/edge-agent.service"

if [ "$ROOT" = / ] && command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify "$unit_dir/edge-agent.service" 2>&1) || true
  if [ -n "$out" ]; then echo "systemd-analyze verify: $out" >&2; exit 1; fi
fi

if [ "$ROOT" = / ] && [ "$START" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now edge-agent
  echo "edge-agent enabled and started: journalctl -u edge-agent -f"
else
  echo "installed. Next: edit /etc/linefleet/agent.yaml, put secrets in /etc/linefleet/credentials/,"
  echo "then: systemctl daemon-reload && systemctl enable --now edge-agent"
fi
