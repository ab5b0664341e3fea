"""The one way both programs open an S3-compatible store: plain boto3, so AWS S3, MinIO, Ceph
RGW and nanio work unchanged. botocore's own retries are off: each caller has its own retry
policy (the agent's uploader backs off store-wide; the trainer fails with a mapped error), and
botocore's would hide outages and stack up behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config as BotoConfig


@dataclass(frozen=True)
class S3Target:
    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    path_style: bool = True
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0


def make_s3_client(target: S3Target, *, max_pool: int = 10) -> Any:
    """A boto3 S3 client. Without keys in the config, boto3's standard credential chain
    (env, shared files, instance role) applies."""
    config = BotoConfig(
        s3={"addressing_style": "path" if target.path_style else "auto"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=target.connect_timeout_s,
        read_timeout=target.read_timeout_s,
        max_pool_connections=max_pool,
    )
    return boto3.client(
        "s3",
        endpoint_url=target.endpoint_url,
        region_name=target.region,
        aws_access_key_id=target.access_key_id,
        aws_secret_access_key=target.secret_access_key,
        config=config,
    )
