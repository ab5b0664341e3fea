"""The trainer's error tree. Third-party errors (boto3, ultralytics, onnx) are mapped to these
at the boundary with ``raise ... from exc``; each message says what to do about it."""

from __future__ import annotations

from shared.errors import ConfigError, LinefleetError


class TrainerError(LinefleetError):
    """Base of the trainer's own errors."""


class TrainerConfigError(TrainerError, ConfigError):
    """The trainer configuration is invalid or names files that cannot be read."""


class StorageError(TrainerError):
    """The object store refused or failed a request."""


class ObjectNotFoundError(StorageError):
    """An object the trainer needs does not exist."""


class StoragePermissionError(StorageError):
    """The credentials lack a permission on the bucket (403 / AccessDenied)."""


class PreconditionFailedError(StorageError):
    """A conditional write lost a race (412): someone else changed the object first."""


class DatasetError(TrainerError):
    """A dataset could not be built (no usable example, unreadable manifest ...)."""


class EmptySelectionError(DatasetError):
    """The selection filters matched no hard example with a usable label."""


class LabelError(TrainerError):
    """A labeling source is misconfigured or unusable."""


class LabelStudioError(LabelError):
    """Label Studio refused or failed a request; the message carries its status and reason."""


class LabelStudioUnavailableError(LabelStudioError):
    """Label Studio did not answer (down, slow, wrong URL): nothing was changed by this call."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the token (wrong, expired, or a legacy token the org disabled)."""


class LabelStudioNotFoundError(LabelStudioError):
    """A project, task or storage Label Studio was asked about does not exist (deleted?)."""


class TrainingError(TrainerError):
    """Fine-tuning failed or cannot start."""


class GpuRequiredError(TrainingError):
    """The config requires a GPU and none is visible to torch."""


class ExportError(TrainerError):
    """The ONNX export failed or does not match the torch model."""


class RegistryError(TrainerError):
    """The model registry is inconsistent or lacks an entry the run needs."""


class ModelNotFoundError(RegistryError):
    """No published model of that name/version exists in the registry."""
