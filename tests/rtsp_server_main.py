"""A test RTSP camera: serves a folder of JPEG frames, looped, as live H.264.

Run it under Debian's ``/usr/bin/python3`` (the GStreamer bindings are Debian packages, not
in the project's virtual environment)::

    /usr/bin/python3 tests/rtsp_server_main.py --port 8554 --frames DIR --fps 10

Frames are ``DIR/%04d.jpg`` numbered from 0. The stream is ``rtsp://127.0.0.1:PORT/stream``
(``--path``), shared by all clients: the pipeline starts at frame 0 when the first client
connects and stops when the last one leaves. Prints ``READY`` once the server listens, and
exits 0 on SIGTERM or SIGINT; exits 2 when it cannot listen or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(frames: Path, fps: int, width: int, height: int, bitrate: int = 2048) -> str:
    """The media pipeline: JPEG frames -> raw I420 at a fixed size and rate -> H.264 -> RTP.

    ``threads=1``: with ``tune=zerolatency`` on several cores x264 cuts each frame into slices,
    ``config-interval=-1`` then puts SPS/PPS between the slices, and FFmpeg decodes the upper
    part of every keyframe as garbage. One thread means one slice per frame.
    """
    location = str(frames / "%04d.jpg").replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'( multifilesrc location="{location}" loop=true caps=image/jpeg,framerate={fps}/1 '
        "! jpegdec ! videorate ! videoscale ! videoconvert "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
        f"! x264enc threads=1 tune=zerolatency speed-preset=ultrafast bitrate={bitrate} "
        f"key-int-max={fps} "
        "! video/x-h264,profile=baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=Path, required=True, help="folder of %%04d.jpg frames")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--path", default="/stream", help="mount point")
    parser.add_argument("--bitrate", type=int, default=2048, help="H.264 kbit/s")
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    if not (args.frames / "0000.jpg").is_file():
        parser.error(f"{args.frames}/0000.jpg does not exist")
    if args.fps <= 0 or args.width <= 0 or args.height <= 0:
        parser.error("--fps, --width and --height must be positive")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    Gst.init(None)
    loop = GLib.MainLoop()

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        launch_line(args.frames.resolve(), args.fps, args.width, args.height, args.bitrate)
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)

    def quit_loop() -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_loop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_loop)

    if server.attach(None) == 0:
        print(f"ERROR cannot listen on {args.address}:{args.port}", file=sys.stderr, flush=True)
        return 2
    print(f"READY rtsp://{args.address}:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
