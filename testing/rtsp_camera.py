"""RTSP cameras on loopback for tests and benchmarks: clips of the synthetic line encoded with
ffmpeg, served by GStreamer's RTSP server (:mod:`testing.rtsp_server`) as a child process that
can be killed, restarted and told to stall, corrupt or change resolution.

Needs Debian's ``ffmpeg``, ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0`` and GStreamer's
good/ugly/bad plugins (``make test`` installs them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from shared.synth.line import LineConfig, SyntheticLine
from testing.local_services import LOOPBACK, PORT_ATTEMPTS, ServiceError, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def rtsp_available() -> str | None:
    """``None`` when everything the RTSP server needs is installed, else what is missing."""
    if shutil.which("ffmpeg") is None:
        return "ffmpeg is not installed (apt-get install ffmpeg)"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed for Debian's python3 "
            "(apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly)"
        )
    return None


def encode_clip(
    path: Path,
    *,
    width: int,
    height: int,
    frames: int,
    fps: int = 25,
    codec: str = "h264",
    bitrate: str = "4M",
    gop: int = 25,
    seed: int = 0,
) -> Path:
    """Encode ``frames`` frames of the synthetic line into an Annex-B elementary stream with
    access unit delimiters (the server splits on them), one slice per frame and no B-frames,
    as IP cameras send. Cached by its parameters: encoding 1080p costs seconds."""
    key = f"{width}x{height}-{frames}-{fps}-{codec}-{bitrate}-{gop}-{seed}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = path / f"line-{width}x{height}-{digest}.{codec}"
    if target.exists():
        return target
    part = max(24, min(width, height) // 5)
    line = SyntheticLine(
        LineConfig(
            width=width,
            height=height,
            fps=fps,
            seed=seed,
            part_size=(part, min(part * 2, height - 100)),
            belt_speed_px=max(4.0, width / 160),
        )
    )
    if codec == "h264":
        encoder = ["-c:v", "libx264", "-x264-params", "aud=1:sliced-threads=0:scenecut=0"]
    elif codec == "h265":
        encoder = ["-c:v", "libx265", "-x265-params", "aud=1:scenecut=0:log-level=error"]
    else:
        raise ValueError(f"codec must be h264 or h265, not {codec!r}")
    partial = target.with_suffix(".part")
    command = [
        "ffmpeg", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps),
        "-i", "-",
        *encoder,
        "-preset", "veryfast", "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p",
        "-b:v", bitrate, "-f", codec if codec == "h264" else "hevc", str(partial),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert process.stdin is not None
    try:
        for _ in range(frames):
            process.stdin.write(line.next_frame().image.tobytes())
    finally:
        process.stdin.close()
    if process.wait() != 0:
        raise ServiceError(f"ffmpeg failed to encode {target.name} (exit {process.returncode})")
    partial.rename(target)
    return target


class RtspServer:
    """GStreamer's RTSP server on a free loopback port, one mount per clip.

    ``kill()`` and ``start()`` simulate a camera rebooting; the commands simulate faults
    while connections stay open. Use as a context manager."""

    def __init__(
        self,
        mounts: dict[str, Path],
        *,
        fps: float = 25.0,
        user: str = "",
        password: str = "",
        port: int | None = None,
    ) -> None:
        self.mounts = dict(mounts)
        self.fps = fps
        self.user = user
        self.password = password
        self.port = port or free_port()
        self._may_move_port = port is None  # see _ChildService.start
        self._process: subprocess.Popen[str] | None = None

    def url(self, mount: str, *, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        credentials = f"{user}:{password}@" if user else ""
        return f"rtsp://{credentials}{LOOPBACK}:{self.port}/{mount}"

    def start(self) -> None:
        """Start; on a fresh port if another process took the picked one before the server
        bound it (only for a port picked here, only before the first start)."""
        for _ in range(PORT_ATTEMPTS):
            if self._start_once() or not self._may_move_port:
                break
            self.port = free_port()
        else:
            raise ServiceError(f"the RTSP server found no free port in {PORT_ATTEMPTS} tries")
        self._may_move_port = False

    def _start_once(self) -> bool:
        """Start the server; False when its port was taken (it exited), an error otherwise."""
        if self._process is not None:
            raise ServiceError("the RTSP server is already running")
        command = [SYSTEM_PYTHON, str(_SERVER_SCRIPT), "--port", str(self.port)]
        command += ["--fps", str(self.fps)]
        for name, clip in self.mounts.items():
            command += ["--mount", f"{name}={clip}"]
        if self.user:
            command += ["--user", self.user, "--password", self.password]
        environment = {**os.environ, "GST_DEBUG": "0"}
        environment.pop("PYTHONPATH", None)  # Debian's python, not the project's venv
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        assert self._process.stdout is not None
        ready = self._process.stdout.readline()
        if not ready.startswith("READY"):
            self.kill()
            if ready.startswith("ERROR port taken") and self._may_move_port:
                return False
            raise ServiceError(f"the RTSP server did not start: {ready.strip()!r}")
        # READY comes after the server bound its port: it listens now.
        return True

    def command(self, line: str) -> None:
        """Apply a fault (see :mod:`testing.rtsp_server`); returns once the server applied it."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise ServiceError("the RTSP server is not running")
        process.stdin.write(line + "\n")
        process.stdin.flush()
        answer = process.stdout.readline()
        if not answer.startswith("OK"):
            raise ServiceError(f"the RTSP server refused {line!r}: {answer.strip()!r}")

    def stall(self, mount: str) -> None:
        self.command(f"stall {mount}")

    def resume(self, mount: str) -> None:
        self.command(f"resume {mount}")

    def corrupt(self, mount: str, frames: int) -> None:
        self.command(f"corrupt {mount} {frames}")

    def switch(self, mount: str, clip: Path) -> None:
        self.command(f"switch {mount} {clip}")

    def kill(self) -> None:
        """Kill the server at once (a camera losing power): no RTSP TEARDOWN is sent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


def clips_for(
    directory: Path, sizes: Sequence[tuple[int, int]], *, frames: int = 100
) -> list[Path]:
    """One clip per size, cached in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return [encode_clip(directory, width=w, height=h, frames=frames) for w, h in sizes]
