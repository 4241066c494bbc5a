#!/usr/bin/env bash
# Installs the Debian packages the tests and `make demo` start for real, when missing:
# Mosquitto (MQTT broker), GStreamer's RTSP server (camera streams) and Chromium (the
# status page is loaded in headless Chromium).
set -euo pipefail
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto mosquitto-clients)
# The RTSP camera of the tests and of `make demo` (agent/devkit/rtsp.py): the server's
# bindings and the elements its pipeline uses (x264enc is in plugins-ugly).
/usr/bin/python3 -c 'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst, GstRtspServer; Gst.init(None); assert all(Gst.ElementFactory.find(e) for e in ("multifilesrc", "jpegdec", "videorate", "videoscale", "videoconvert", "x264enc", "rtph264pay"))' 2>/dev/null \
  || need+=(gir1.2-gst-rtsp-server-1.0 python3-gi python3-gst-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  echo "Installing Debian packages: ${need[*]}" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
