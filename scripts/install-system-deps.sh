#!/usr/bin/env bash
# Installs the system packages the tests and the demo need (Debian/Ubuntu): mosquitto,
# systemd-analyze, chromium and PostgreSQL. Safe to run repeatedly: it does nothing when they
# are all there.
set -euo pipefail

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
# systemd-analyze checks the shipped unit in the tests.
have_systemd_analyze() { command -v systemd-analyze >/dev/null 2>&1; }
# Headless Chromium loads the control-plane dashboard in the tests.
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
# The control plane's tests also run on a real PostgreSQL (Debian keeps initdb off PATH).
have_postgres() { command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if have_mosquitto && have_systemd_analyze && have_chromium && have_postgres; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "a system package is missing and this is not a Debian-like system: install mosquitto (>= 2.0), systemd, chromium and postgresql yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "packages missing and we are not root: run 'apt-get install mosquitto mosquitto-clients systemd chromium postgresql' as root" >&2
    exit 1
  fi
fi
echo "installing mosquitto, systemd (for systemd-analyze), chromium (dashboard test) and postgresql with apt-get ..."
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients systemd chromium postgresql >/dev/null
have_mosquitto || { echo "mosquitto still not found after apt-get install" >&2; exit 1; }
have_systemd_analyze || { echo "systemd-analyze still not found after apt-get install" >&2; exit 1; }
have_chromium || { echo "chromium still not found after apt-get install" >&2; exit 1; }
have_postgres || { echo "PostgreSQL's initdb still not found after apt-get install" >&2; exit 1; }
echo "mosquitto installed: $( (mosquitto -h 2>/dev/null || /usr/sbin/mosquitto -h) | head -1)"
