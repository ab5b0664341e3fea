"""A real RTSP server for tests and benchmarks: GStreamer's RTSP server fed with H.264/H.265
access units from files, at the camera's pace, with faults on command.

Runs under Debian's ``python3`` (``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``), not in the
project's virtualenv, so it imports nothing from the project. The clips are encoded once,
before the server starts (see :mod:`testing.rtsp_camera`): serving them costs no encoding, so a
benchmark measures the client, not the server.

Each mount is one camera. A feeder thread per mount pushes one access unit per frame interval
into an ``appsrc`` (``h264parse``/``h265parse`` -> RTP payloader), looping the clip; all clients
of a mount share it, like a real camera. Faults, one command per line on stdin:

- ``stall MOUNT``: stop sending frames, keep every connection open (a hung encoder);
- ``resume MOUNT``: send frames again;
- ``corrupt MOUNT N``: damage the slice data of the next N frames (packet loss, bit errors);
- ``switch MOUNT PATH``: continue with another clip, e.g. another resolution, from its next
  key frame (a camera reconfigured mid-stream).

The server prints ``READY <port>`` on stdout once it listens, and ``OK <command>`` after each
command is applied.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

_AUD_H264 = 9
_AUD_H265 = 35


def _nal_type(codec: str, header: int) -> int:
    return header & 0x1F if codec == "h264" else (header >> 1) & 0x3F


def split_access_units(data: bytes, codec: str) -> list[bytes]:
    """Annex-B stream -> access units, split at access unit delimiters (the clips are encoded
    with them, so no slice header needs parsing)."""
    aud = _AUD_H264 if codec == "h264" else _AUD_H265
    starts: list[int] = []
    index = data.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(data):
        if _nal_type(codec, data[index + 3]) == aud:
            # Include a leading zero byte of a four-byte start code.
            starts.append(index - 1 if index > 0 and data[index - 1] == 0 else index)
        index = data.find(b"\x00\x00\x01", index + 3)
    if not starts:
        raise SystemExit(f"no access unit delimiters in the {codec} clip: encode with aud=1")
    starts.append(len(data))
    return [data[a:b] for a, b in itertools.pairwise(starts)]


def is_key_frame(unit: bytes, codec: str) -> bool:
    index = unit.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(unit):
        kind = _nal_type(codec, unit[index + 3])
        if (codec == "h264" and kind == 5) or (codec == "h265" and 16 <= kind <= 21):
            return True
        index = unit.find(b"\x00\x00\x01", index + 3)
    return False


def damage(unit: bytes) -> bytes:
    """Overwrite the middle of the access unit's slice data, keeping the start codes intact
    (a lost RTP packet's worth of garbage)."""
    body = bytearray(unit)
    start, end = len(body) // 3, len(body) // 3 + max(64, len(body) // 4)
    for i in range(start, min(end, len(body))):
        if body[i] not in (0, 1):
            body[i] = (body[i] * 131 + 7) % 251 + 2
    return bytes(body)


def load_clip(path: str) -> tuple[str, list[bytes]]:
    codec = "h265" if path.endswith((".h265", ".hevc")) else "h264"
    return codec, split_access_units(Path(path).read_bytes(), codec)


class Mount:
    """One camera: its clip, its feeder thread, and the appsrc of its shared media."""

    def __init__(self, name: str, path: str, fps: float) -> None:
        self.name = name
        self.codec, self.units = load_clip(path)
        self.period = 1.0 / fps
        self.lock = threading.Lock()
        self.sources: list[Gst.Element] = []
        self.stalled = False
        self.corrupt_left = 0
        self.position = 0
        self.pending_switch: list[bytes] | None = None

    def launch_line(self) -> str:
        caps = (
            "video/x-h264,stream-format=byte-stream,alignment=au"
            if self.codec == "h264"
            else "video/x-h265,stream-format=byte-stream,alignment=au"
        )
        return (
            f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
            f"! {self.codec}parse ! rtp{self.codec}pay name=pay0 pt=96 config-interval=-1 )"
        )

    def attach(self, media: GstRtspServer.RTSPMedia) -> None:
        """Feed this media's appsrc while it plays, starting at a key frame. Frames pushed
        while the media only prerolls would queue up in appsrc and reach the client seconds
        late, a latency no camera has."""
        source = media.get_element().get_child_by_name("src")
        media.connect("new-state", self._state_changed, source)
        with self.lock:
            # One key frame now: the payloader needs the parameter sets for the SDP.
            key = self._next_key_frame(self.units, self.position)
            source.emit("push-buffer", Gst.Buffer.new_wrapped(self.units[key]))

    def _state_changed(
        self, _media: GstRtspServer.RTSPMedia, state: int, source: Gst.Element
    ) -> None:
        with self.lock:
            if state == Gst.State.PLAYING:
                self.sources = [source]
                self.position = self._next_key_frame(self.units, self.position)
            elif source in self.sources:
                self.sources = []

    def _next_key_frame(self, units: list[bytes], start: int) -> int:
        for offset in range(len(units)):
            index = (start + offset) % len(units)
            if is_key_frame(units[index], self.codec):
                return index
        return 0

    def feed_forever(self) -> None:
        next_due = time.monotonic()
        while True:
            next_due += self.period
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_due = time.monotonic()  # behind: do not burst to catch up
            with self.lock:
                if self.pending_switch is not None:
                    self._switch_now()
                if self.stalled or not self.sources:
                    continue
                unit = self.units[self.position]
                self.position = (self.position + 1) % len(self.units)
                if self.corrupt_left > 0 and not is_key_frame(unit, self.codec):
                    self.corrupt_left -= 1
                    unit = damage(unit)
                sources = list(self.sources)
            for source in sources:
                source.emit("push-buffer", Gst.Buffer.new_wrapped(unit))

    def _switch_now(self) -> None:
        """Continue with the new clip from its first key frame (called under the lock)."""
        assert self.pending_switch is not None
        self.units, self.pending_switch = self.pending_switch, None
        self.position = self._next_key_frame(self.units, 0)


class Server:
    def __init__(self, port: int, mounts: dict[str, Mount], user: str, password: str) -> None:
        self.mounts = mounts
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(port))
        if user:
            auth = GstRtspServer.RTSPAuth()
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", "camera-user")
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            self.server.set_auth(auth)
        points = self.server.get_mount_points()
        for mount in mounts.values():
            factory = GstRtspServer.RTSPMediaFactory()
            factory.set_launch(mount.launch_line())
            factory.set_shared(True)
            factory.connect("media-configure", self._configured, mount)
            if user:
                factory.add_role_from_structure(
                    Gst.Structure.new_from_string(
                        "camera-user, media.factory.access=(boolean)true, "
                        "media.factory.construct=(boolean)true"
                    )
                )
            points.add_factory(f"/{mount.name}", factory)
        if self.server.attach(None) == 0:
            # On stdout, where the parent waits for READY: it picks another port.
            print(f"ERROR port taken: 127.0.0.1:{port}", flush=True)
            raise SystemExit(1)

    @staticmethod
    def _configured(
        _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia, mount: Mount
    ) -> None:
        mount.attach(media)

    def command(self, line: str) -> str:
        words = line.split()
        if len(words) < 2 or words[1] not in self.mounts:
            return f"ERROR unknown command or mount: {line!r}"
        mount = self.mounts[words[1]]
        with mount.lock:
            if words[0] == "stall":
                mount.stalled = True
            elif words[0] == "resume":
                mount.stalled = False
            elif words[0] == "corrupt" and len(words) == 3:
                mount.corrupt_left = int(words[2])
            elif words[0] == "switch" and len(words) == 3:
                codec, units = load_clip(words[2])
                if codec != mount.codec:
                    return f"ERROR {words[2]} is {codec}, the mount serves {mount.codec}"
                mount.pending_switch = units
            else:
                return f"ERROR unknown command: {line!r}"
        return f"OK {line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--mount", action="append", required=True, help="NAME=CLIP_PATH")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    Gst.init(None)
    mounts = {}
    for spec in args.mount:
        name, _, path = spec.partition("=")
        mounts[name] = Mount(name, path, args.fps)
    server = Server(args.port, mounts, args.user, args.password)
    for mount in mounts.values():
        threading.Thread(target=mount.feed_forever, daemon=True).start()
    loop = GLib.MainLoop()

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip():
                print(server.command(line.strip()), flush=True)
        loop.quit()  # stdin closed: the parent is gone

    threading.Thread(target=read_commands, daemon=True).start()
    print(f"READY {args.port}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
