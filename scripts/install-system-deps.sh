#!/usr/bin/env bash
# Installs the system packages the tests and the demo need (Debian/Ubuntu): mosquitto,
# systemd-analyze, chromium, PostgreSQL, and a real RTSP server (GStreamer's, for Debian's python3)
# with ffmpeg to encode its clips. Safe to run repeatedly: it does nothing when they
# are all there.
set -euo pipefail

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
# systemd-analyze checks the shipped unit in the tests.
have_systemd_analyze() { command -v systemd-analyze >/dev/null 2>&1; }
# Headless Chromium loads the control-plane dashboard in the tests.
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
# The control plane's tests also run on a real PostgreSQL (Debian keeps initdb off PATH).
have_postgres() { command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
# The camera tests stream H.264/H.265 from GStreamer's RTSP server (x264enc's plugin set also
# holds what the server needs; ffmpeg encodes the clips).
RTSP_PACKAGES="ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
have_rtsp_server() {
  command -v ffmpeg >/dev/null 2>&1 && [ -x /usr/bin/python3 ] &&
    /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" >/dev/null 2>&1 &&
    gst-inspect-1.0 rtph265pay >/dev/null 2>&1
}

if have_mosquitto && have_systemd_analyze && have_chromium && have_postgres && have_rtsp_server; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "a system package is missing and this is not a Debian-like system: install mosquitto (>= 2.0), systemd, chromium and postgresql yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "packages missing and we are not root: run 'apt-get install mosquitto mosquitto-clients systemd chromium postgresql $RTSP_PACKAGES gstreamer1.0-tools' as root" >&2
    exit 1
  fi
fi
echo "installing mosquitto, systemd (for systemd-analyze), chromium (dashboard test), postgresql and the RTSP test server with apt-get ..."
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients systemd chromium postgresql $RTSP_PACKAGES gstreamer1.0-tools >/dev/null
have_mosquitto || { echo "mosquitto still not found after apt-get install" >&2; exit 1; }
have_systemd_analyze || { echo "systemd-analyze still not found after apt-get install" >&2; exit 1; }
have_chromium || { echo "chromium still not found after apt-get install" >&2; exit 1; }
have_postgres || { echo "PostgreSQL's initdb still not found after apt-get install" >&2; exit 1; }
have_rtsp_server || { echo "GStreamer's RTSP server (or ffmpeg) still not usable after apt-get install" >&2; exit 1; }
echo "mosquitto installed: $( (mosquitto -h 2>/dev/null || /usr/sbin/mosquitto -h) | head -1)"
