"""Every check a desired state and its manifest must pass before anything is downloaded.

Signatures first (the control plane's over the desired state, the trainer's over the
manifest; both against configured trusted keys), then freshness, identity and policy.
Each failure is an :class:`OtaRejectedError` whose message goes into the reported state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.errors import EdgeAgentError
from shared.errors import ContractError, SignatureError
from shared.identifiers import parse_semver
from shared.manifest import ModelManifest
from shared.messages import DesiredAction, DesiredState, DesiredTarget, TargetScope
from shared.signing import Verifier


class OtaRejectedError(EdgeAgentError):
    """A desired state or model was refused; the agent keeps running what it runs."""


class StaleDesiredError(OtaRejectedError):
    """A validly signed desired state older than one already handled (a replay, or a retained
    copy from before): ignored, and nothing about the device's state changes."""


@dataclass(frozen=True)
class Expectations:
    model_name: str
    agent_version: str
    fleet: str
    device_id: str
    group: str | None = None
    class_names: tuple[str, ...] | None = None

    def accepts(self, target: DesiredTarget) -> bool:
        """A desired state addressed to this device, or to its group."""
        if target.scope is TargetScope.DEVICE:
            return target.id == self.device_id
        return self.group is not None and target.id == self.group


def verify_desired(
    desired: DesiredState,
    verifier: Verifier,
    expected: Expectations,
    *,
    running_version: int | None,
    last_sequence: int,
    now: datetime | None = None,
) -> ModelManifest:
    """Return the manifest to install, or raise :class:`OtaRejectedError` with the reason."""
    try:
        verifier.verify(desired)
    except SignatureError as exc:
        raise OtaRejectedError(f"desired state rejected: {exc}") from exc
    manifest = desired.manifest
    try:
        verifier.verify(manifest)
    except SignatureError as exc:
        raise OtaRejectedError(f"manifest rejected: {exc}") from exc
    # What was signed names its target: a message for another fleet, device or group is not
    # for us, however valid its signature.
    if desired.fleet != expected.fleet:
        raise OtaRejectedError(
            f"desired state is for fleet {desired.fleet!r}, this device is in {expected.fleet!r}"
        )
    if not expected.accepts(desired.target):
        group = f" or group {expected.group!r}" if expected.group else ""
        raise OtaRejectedError(
            f"desired state is for {desired.target}, not this device "
            f"({expected.device_id!r}{group})"
        )
    if desired.sequence <= last_sequence:
        raise StaleDesiredError(
            f"replayed or stale desired state (sequence {desired.sequence} <= {last_sequence})"
        )
    if manifest.is_expired(now or datetime.now(UTC)):
        raise OtaRejectedError(
            f"manifest for version {manifest.version} expired at {manifest.expires_at}"
        )
    if manifest.model_name != expected.model_name:
        raise OtaRejectedError(
            f"manifest is for model {manifest.model_name!r}, "
            f"this device runs {expected.model_name!r}"
        )
    if (
        running_version is not None
        and manifest.version < running_version
        and desired.action is not DesiredAction.ROLLBACK
    ):
        raise OtaRejectedError(
            f"downgrade from {running_version} to {manifest.version} without a signed rollback"
        )
    try:
        if parse_semver(manifest.min_agent_version) > parse_semver(expected.agent_version):
            raise OtaRejectedError(
                f"model needs agent >= {manifest.min_agent_version}, "
                f"this is {expected.agent_version}"
            )
    except ContractError as exc:
        raise OtaRejectedError(str(exc)) from exc
    if expected.class_names is not None and tuple(manifest.class_names) != expected.class_names:
        raise OtaRejectedError(
            f"model classes {manifest.class_names} differ from the line's "
            f"{list(expected.class_names)}"
        )
    return manifest
