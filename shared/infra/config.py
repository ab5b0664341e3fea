"""Configuration plumbing the agent and the trainer share: the section base, YAML and secret-file
reading, the validation-error formatter, and the connection sections (MQTT broker, S3 store)
whose keys mean the same on both sides.

Each program extends these with its own keys (the agent's events rate, the trainer's longer
timeouts) in its own config module, so neither accepts the other's keys. Validation stays pure:
files are read by :func:`read_yaml` and :func:`read_secret_file` when a program starts, never
inside a validator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.errors import ConfigError
from shared.infra.s3 import S3Target
from shared.validation import describe_validation_error


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not fall back to a default)."""

    model_config = ConfigDict(extra="forbid")


class TlsSection(Section):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False


class MqttConnectionSection(Section):
    """How to reach the broker, as a device or as the control plane."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "lf"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsSection | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0)
    outbox_limit: int = Field(default=10_000, ge=10)


class S3Section(Section):
    """An S3-compatible store (AWS S3, MinIO, Ceph RGW ...). Without keys here, boto3's standard
    chain (env, ~/.aws, instance role) provides credentials."""

    bucket: str = Field(default="linefleet", min_length=3, max_length=63)
    endpoint_url: str | None = None
    region: str = "us-east-1"
    path_style: bool = True
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    # For systemd LoadCredential and secret managers: the secret is read from this file at start.
    secret_access_key_file: Path | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    read_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    def target(self) -> S3Target:
        secret = self.secret_access_key
        return S3Target(
            bucket=self.bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            path_style=self.path_style,
            access_key_id=self.access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )


def read_secret_file(path: Path, what: str) -> SecretStr:
    """A secret from a file (systemd credentials); trailing newlines are not part of it."""
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc}") from exc
    if not text:
        raise ConfigError(f"{what} file {path} is empty")
    return SecretStr(text)


def with_secret_files(
    mqtt: MqttConnectionSection | None, storage: S3Section | None, where: str = ""
) -> dict[str, Any]:
    """Copies of the sections with their ``*_file`` secrets read in, as a ``model_copy`` update
    (only the sections that changed)."""
    update: dict[str, Any] = {}
    if storage is not None and storage.secret_access_key_file is not None:
        secret = read_secret_file(
            storage.secret_access_key_file, f"{where}storage.secret_access_key_file"
        )
        update["storage"] = storage.model_copy(update={"secret_access_key": secret})
    if mqtt is not None and mqtt.password_file is not None:
        password = read_secret_file(mqtt.password_file, f"{where}mqtt.password_file")
        update["mqtt"] = mqtt.model_copy(update={"password": password})
    return update


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; :class:`ConfigError` names what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem}") from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def config_error(exc: ValidationError, source: str) -> ConfigError:
    """One :class:`ConfigError` listing each problem of a config file on its own line."""
    listing = describe_validation_error(exc, separator="\n  - ")
    return ConfigError(f"{source}: {exc.error_count()} problem(s):\n  - {listing}")
