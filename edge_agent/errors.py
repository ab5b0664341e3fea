"""The edge agent's error tree; third-party errors are mapped here with ``raise ... from``."""

from __future__ import annotations

from shared.errors import ConfigError, LinefleetError

__all__ = [
    "CameraError",
    "ConfigError",
    "EdgeAgentError",
    "InferenceError",
    "ModelIncompatibleError",
    "ModelLoadError",
    "RunCancelledError",
]


class EdgeAgentError(LinefleetError):
    """Base of the agent's own errors. Configuration errors are the shared
    :class:`~shared.errors.ConfigError` (the trainer's config raises it too)."""


class ModelLoadError(EdgeAgentError):
    """A model could not be loaded: missing file, not ONNX, or refused by onnxruntime."""


class ModelIncompatibleError(ModelLoadError):
    """A model loaded but its inputs/outputs do not match what the agent or manifest expects."""


class InferenceError(EdgeAgentError):
    """A model run failed or produced unusable output (NaN, infinity, wrong shape)."""


class RunCancelledError(EdgeAgentError):
    """A model run was stopped through its :class:`~edge_agent.inference.CancelToken` (a live
    frame needed the worker). Not a fault of the model: run the work again later."""


class CameraError(EdgeAgentError):
    """A frame source could not be opened or read."""


class CameraStallError(CameraError):
    """The camera's connection is open but no frame came within the read timeout (a hung
    encoder, a saturated link): reconnect."""


class CameraAuthError(CameraError):
    """The camera refused our credentials. Retrying at full speed would only fill its log and
    may lock the account: fix the URL's user and password."""
