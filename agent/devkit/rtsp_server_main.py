"""A test and demo RTSP camera: serves a folder of JPEG frames, looped, as live H.264.

Run it under Debian's ``/usr/bin/python3`` (the GStreamer bindings are Debian packages, not
in the project's virtual environment)::

    /usr/bin/python3 agent/devkit/rtsp_server_main.py --port 8554 --frames DIR --fps 10

Frames are ``DIR/%04d.jpg`` numbered from 0. The stream is ``rtsp://127.0.0.1:PORT/stream``
(``--path``), shared by all clients: the pipeline starts at frame 0 when the first client
connects and stops when the last one leaves. Prints ``READY`` once the server listens, and
exits 0 on SIGTERM or SIGINT; exits 2 when it cannot listen or the arguments are wrong.

Faulty cameras for tests: ``--pattern`` serves GStreamer's test picture instead of frames,
``--audio`` adds an audio track (A-law), ``--video-stops-after S`` drops every video packet
after S seconds while the audio goes on, and ``--no-keyframes`` drops every keyframe (the
stream never gives a decoder a place to start).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(
    frames: Path | None,
    fps: int,
    width: int,
    height: int,
    bitrate: int = 2048,
    *,
    audio: bool = False,
    key_interval: int = 0,
) -> str:
    """The media pipeline: JPEG frames -> raw I420 at a fixed size and rate -> H.264 -> RTP.

    ``threads=1``: with ``tune=zerolatency`` on several cores x264 cuts each frame into slices,
    ``config-interval=-1`` then puts SPS/PPS between the slices, and FFmpeg decodes the upper
    part of every keyframe as garbage. One thread means one slice per frame.
    """
    if frames is None:  # GStreamer's test picture, live
        source = "videotestsrc is-live=true pattern=ball "
    else:
        location = str(frames / "%04d.jpg").replace("\\", "\\\\").replace('"', '\\"')
        source = (
            f'multifilesrc location="{location}" loop=true caps=image/jpeg,framerate={fps}/1 '
            "! jpegdec "
        )
    sound = (
        " audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample "
        "! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8"
        if audio
        else ""
    )
    return (
        f"( {source}! videorate ! videoscale ! videoconvert "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
        f"! x264enc name=enc threads=1 tune=zerolatency speed-preset=ultrafast "
        f"bitrate={bitrate} key-int-max={key_interval or fps} "
        "! video/x-h264,profile=baseline "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1{sound} )"
    )


def add_video_faults(
    media: GstRtspServer.RTSPMedia, stop_after: float, no_keyframes: bool, started: list[float]
) -> None:
    """Drop video packets at the encoder's output: all of them ``stop_after`` seconds after
    the server's first one (a camera whose video died while its audio goes on; ``started``
    is shared by every media, so a client that reconnects gets no video either), or every
    keyframe."""
    encoder = media.get_element().get_by_name("enc")

    def probe(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        now = time.monotonic()
        started[:] = started or [now]
        if stop_after and now - started[0] >= stop_after:
            return Gst.PadProbeReturn.DROP
        if no_keyframes and not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    encoder.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=Path, help="folder of %%04d.jpg frames")
    parser.add_argument("--pattern", action="store_true", help="a test picture, no frames")
    parser.add_argument("--audio", action="store_true", help="add an audio track")
    parser.add_argument("--video-stops-after", type=float, default=0.0, metavar="S")
    parser.add_argument("--no-keyframes", action="store_true")
    parser.add_argument("--key-interval", type=int, default=0, help="frames between keyframes")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--path", default="/stream", help="mount point")
    parser.add_argument("--bitrate", type=int, default=2048, help="H.264 kbit/s")
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    if args.pattern:
        args.frames = None
    elif args.frames is None or not (args.frames / "0000.jpg").is_file():
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
    frames = args.frames.resolve() if args.frames is not None else None
    factory.set_launch(
        launch_line(
            frames,
            args.fps,
            args.width,
            args.height,
            args.bitrate,
            audio=args.audio,
            key_interval=args.key_interval,
        )
    )
    factory.set_shared(True)
    if args.video_stops_after or args.no_keyframes:
        started: list[float] = []
        factory.connect(
            "media-configure",
            lambda _factory, media: add_video_faults(
                media, args.video_stops_after, args.no_keyframes, started
            ),
        )
    server.get_mount_points().add_factory(args.path, factory)

    def quit_loop() -> bool:
        loop.quit()
        return False  # GLib.SOURCE_REMOVE: the handler is not called again

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
