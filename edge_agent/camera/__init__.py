"""Frame sources behind one interface, each driven by a :class:`CameraWorker` state machine."""

from edge_agent.camera.frame import CameraState, DecodedPicture, Frame, I420Planes
from edge_agent.camera.hub import FrameHub
from edge_agent.camera.pyav_source import PyAVSource
from edge_agent.camera.sources import FrameSource, OpenCVSource, SyntheticSource, redact_url
from edge_agent.camera.worker import Backoff, CameraWorker

__all__ = [
    "Backoff",
    "CameraState",
    "CameraWorker",
    "DecodedPicture",
    "Frame",
    "FrameHub",
    "FrameSource",
    "I420Planes",
    "OpenCVSource",
    "PyAVSource",
    "SyntheticSource",
    "redact_url",
]
