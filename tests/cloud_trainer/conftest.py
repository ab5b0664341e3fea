from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloud_trainer.config import StorageSection
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.offline import prepare_offline_ultralytics
from shared.signing import SigningKey
from testing.local_services import MotoS3Process, PostgresProcess
from tests.cloud_trainer.helpers import BOOTSTRAP_PT


@pytest.fixture(scope="session")
def offline_ultralytics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics pointed at a private config dir, no network paths (once per session)."""
    return prepare_offline_ultralytics(tmp_path_factory.mktemp("ultralytics"))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The control plane's database: a SQLite file, or with
    ``@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)``
    a fresh database on the real PostgreSQL server too."""
    if getattr(request, "param", "sqlite") == "postgres":
        server: PostgresProcess = request.getfixturevalue("postgres")
        return server.create_database(f"fleet_{uuid.uuid4().hex[:12]}")
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture(scope="session")
def bootstrap_model(
    offline_ultralytics: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(.pt, .onnx) of the committed bootstrap model; the ONNX exported here, offline."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("bootstrap")
    weights = folder / "bootstrap.pt"
    shutil.copyfile(BOOTSTRAP_PT, weights)
    onnx = Path(YOLO(str(weights)).export(format="onnx", imgsz=320, opset=18, simplify=True))
    return weights, onnx


def storage_section(server: MotoS3Process, bucket: str) -> StorageSection:
    return StorageSection(
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(s3_server: MotoS3Process, bucket: str) -> ObjectStore:
    return ObjectStore.from_config(storage_section(s3_server, bucket))


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[SigningKey, Path]:
    key = SigningKey.generate("trainer-test")
    path = tmp_path / "trainer-test.key"
    path.write_bytes(key.private_pem())
    return key, path


def config_data(server: MotoS3Process, bucket: str, work: Path, key_file: Path) -> dict[str, Any]:
    return {
        "storage": storage_section(server, bucket).model_dump(mode="json")
        | {"secret_access_key": server.secret_key},
        "signing": {"key_id": "trainer-test", "key_file": str(key_file)},
        "work_dir": str(work),
    }
