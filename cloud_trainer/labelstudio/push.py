"""``cloud-trainer labels push``: new hard examples become Label Studio tasks.

The project of the model line is found by title or created with a labeling interface made
from the line's classes; the bucket is connected as the project's S3 storage so Label Studio
serves each image straight from the store (presigned), nothing is copied through the
trainer. A task carries the agent's detections as pre-annotations with the model version.

Idempotent: the example's key is in the task's data and a push first lists the project's
keys, so a second push, or one after a crash halfway, adds nothing twice. The most useful
examples go first (sampler priority: defects, disagreement and low confidence before the
random share), because Label Studio hands tasks out in import order.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloud_trainer.config import TrainerConfig
from cloud_trainer.data.dataset import (
    ExampleRef,
    SidecarProblem,
    read_sidecar,
    select_examples,
)
from cloud_trainer.errors import LabelError, LabelStudioNotFoundError
from cloud_trainer.labelstudio.client import LabelStudioClient
from cloud_trainer.labelstudio.tasks import label_config, task_for_example
from cloud_trainer.store import ObjectStore
from shared.hard_examples import HardExampleSidecar
from shared.object_keys import HARD_EXAMPLES

log = logging.getLogger(__name__)

MAX_TITLE = 50  # Label Studio's limit on project titles
READ_WORKERS = 8


def project_title(config: TrainerConfig) -> str:
    studio = config.labeling.label_studio
    line = config.model_line
    title = studio.project_title or f"linefleet {line.fleet} {line.name}"
    if len(title) > MAX_TITLE:
        raise LabelError(
            f"Label Studio project title {title!r} is over {MAX_TITLE} characters: set "
            "labeling.label_studio.project_title"
        )
    return title


def find_project(client: LabelStudioClient, config: TrainerConfig) -> int:
    """The model line's project id; :class:`LabelStudioNotFoundError` if there is none."""
    title = project_title(config)
    project = client.find_project(title)
    if project is None:
        raise LabelStudioNotFoundError(
            f"Label Studio has no project {title!r} (deleted?): `cloud-trainer labels push` "
            "creates it"
        )
    return int(project["id"])


def _labels_in(config_xml: str) -> list[str] | None:
    try:
        root = ET.fromstring(config_xml)  # noqa: S314 - Label Studio's own config, size-bound
    except ET.ParseError:
        return None
    return [str(label.get("value")) for label in root.iter("Label")]


def ensure_project(client: LabelStudioClient, config: TrainerConfig) -> int:
    """Find or create the project; add classes the model line gained since."""
    title = project_title(config)
    classes = config.model_line.classes
    wanted = label_config(classes)
    project = client.find_project(title)
    if project is None:
        description = (
            f"Hard examples of fleet {config.model_line.fleet}, model line "
            f"{config.model_line.name}, pushed by linefleet. Correct the pre-labels."
        )
        created = client.create_project(title, wanted, description)
        log.info("created Label Studio project %r (id %s)", title, created["id"])
        return int(created["id"])
    project_id = int(project["id"])
    present = _labels_in(str(project.get("label_config") or ""))
    if present is None or not set(classes) <= set(present):
        # The line gained a class. Label Studio refuses (with its reason) a config that
        # drops a label in use; labels people added themselves are rejected at pull.
        client.update_label_config(project_id, wanted)
        log.info("updated the labels of project %r to %s", title, list(classes))
    return project_id


def ensure_storage(client: LabelStudioClient, project_id: int, config: TrainerConfig) -> None:
    """Connect the bucket so ``s3://`` image URIs resolve to presigned URLs."""
    storage = config.storage
    if any(s.get("bucket") == storage.bucket for s in client.s3_storages(project_id)):
        return
    secret = storage.secret_access_key
    if storage.access_key_id is None or secret is None:
        raise LabelError(
            f"Label Studio needs S3 keys to show images of bucket {storage.bucket!r}: set "
            "storage.access_key_id/secret_access_key (a read-only key is enough), or add the "
            "bucket as the project's S3 source storage in Label Studio yourself"
        )
    studio = config.labeling.label_studio
    endpoint = studio.storage_endpoint_url or storage.endpoint_url
    settings: dict[str, Any] = {
        "title": f"linefleet {storage.bucket}",
        "bucket": storage.bucket,
        "prefix": f"{HARD_EXAMPLES}/{config.model_line.fleet}/",
        "regex_filter": r".*\.jpg$",
        "use_blob_urls": True,
        "presign": True,
        "presign_ttl": studio.presign_ttl_minutes,
        "recursive_scan": True,
        "region_name": storage.region,
        "aws_access_key_id": storage.access_key_id,
        "aws_secret_access_key": secret.get_secret_value(),
    }
    if endpoint:
        settings["s3_endpoint"] = endpoint
    client.create_s3_storage(project_id, settings)
    log.info("connected bucket %s to Label Studio project %d", storage.bucket, project_id)


@dataclass
class PushResult:
    project_id: int
    pushed: int = 0
    already_there: int = 0
    left_for_later: int = 0  # over --limit
    invalid: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"project {self.project_id}: pushed {self.pushed} task(s), "
            f"{self.already_there} already there, {self.left_for_later} left for a later push"
        ]
        lines += [f"not pushed {key}: {why}" for key, why in list(self.invalid.items())[:20]]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
    """What ordering needs of an example; its sidecar is read again when its batch is built,
    so a push holds a few numbers per example, not every task, in memory."""

    priority: float
    captured_at: datetime
    ref: ExampleRef


def _read(store: ObjectStore, ref: ExampleRef, classes: list[str]) -> HardExampleSidecar | str:
    """The sidecar, or why the example is not pushed."""
    try:
        return read_sidecar(store, ref, classes)
    except SidecarProblem as problem:
        return str(problem)


def push_examples(
    store: ObjectStore,
    client: LabelStudioClient,
    config: TrainerConfig,
    *,
    limit: int | None = None,
) -> PushResult:
    """Push the examples Label Studio does not have yet, most useful first."""
    studio = config.labeling.label_studio
    classes = list(config.model_line.classes)
    project_id = ensure_project(client, config)
    ensure_storage(client, project_id, config)
    result = PushResult(project_id)
    present: set[str] = set()
    for task in client.iter_tasks(project_id, with_annotations=False, page_size=studio.page_size):
        key = (task.get("data") or {}).get("example_key")
        if isinstance(key, str):
            present.add(key)
    selection = select_examples(store, config.model_line.fleet, config.selection)
    fresh = [ref for ref in selection.examples if ref.image.key not in present]
    result.already_there = len(selection.examples) - len(fresh)
    candidates: list[_Candidate] = []
    with ThreadPoolExecutor(READ_WORKERS) as pool:
        for ref, read in zip(
            fresh, pool.map(lambda r: _read(store, r, classes), fresh), strict=True
        ):
            if isinstance(read, str):
                result.invalid[ref.image.key] = read
            else:
                candidates.append(_Candidate(read.priority, read.captured_at, ref))
        candidates.sort(key=lambda c: (-c.priority, c.captured_at, c.ref.image.key))
        if limit is not None and len(candidates) > limit:
            result.left_for_later = len(candidates) - limit
            del candidates[limit:]
        for start in range(0, len(candidates), studio.batch_size):
            batch = candidates[start : start + studio.batch_size]
            tasks = []
            for candidate, read in zip(
                batch, pool.map(lambda c: _read(store, c.ref, classes), batch), strict=True
            ):
                if isinstance(read, str):  # changed since the first read
                    result.invalid[candidate.ref.image.key] = read
                    continue
                key = candidate.ref.image.key
                tasks.append(
                    task_for_example(
                        read,
                        example_key=key,
                        image_uri=f"s3://{store.bucket}/{key}",
                        classes=classes,
                    )
                )
            if tasks:
                client.import_tasks(project_id, tasks)
            result.pushed += len(tasks)
            log.info(
                "pushed %d/%d task(s) to project %d", result.pushed, len(candidates), project_id
            )
    return result
