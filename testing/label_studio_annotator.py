"""A scripted annotator for the demo, tests and benchmark: it labels Label Studio's tasks
through Label Studio's own API, as a person at the labeling screen would, with the exact
truth the synthetic line attached to each example's sidecar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud_trainer.labelstudio.client import LabelStudioClient
from cloud_trainer.labelstudio.tasks import rectangles_result
from cloud_trainer.store import ObjectStore
from shared.detections import Detections
from shared.hard_examples import HardExampleSidecar


@dataclass
class Annotated:
    submitted: int = 0
    skipped: int = 0


def truth_result(
    store: ObjectStore, example_key: str, classes: list[str]
) -> list[dict[str, Any]] | None:
    """The synthetic truth of an example as an annotation's ``result`` (what a person would
    draw), or None when its sidecar carries no truth."""
    body, _ = store.get(example_key.removesuffix(".jpg") + ".json", max_bytes=1024 * 1024)
    sidecar = HardExampleSidecar.model_validate_json(body)
    if sidecar.synthetic_truth is None:
        return None
    truth = Detections.from_records(r.model_dump() for r in sidecar.synthetic_truth)
    result = rectangles_result(truth, classes, sidecar.image_width, sidecar.image_height)
    for item in result:
        item.pop("score", None)  # a person's box has no score
    return result


def annotate_with_truth(
    client: LabelStudioClient,
    project_id: int,
    store: ObjectStore,
    classes: list[str],
    *,
    limit: int | None = None,
) -> Annotated:
    """Submit the synthetic truth for every task nobody annotated yet (at most ``limit``,
    in Label Studio's order: the order people are given tasks). A task whose example has
    no truth is skipped, as a person skips an image they cannot judge."""
    done = Annotated()
    for task in client.iter_tasks(project_id, with_annotations=True):
        if limit is not None and done.submitted + done.skipped >= limit:
            break
        if task.get("annotations"):
            continue
        result = truth_result(store, str(task["data"]["example_key"]), classes)
        if result is None:
            client.create_annotation(int(task["id"]), [], was_cancelled=True)
            done.skipped += 1
            continue
        client.create_annotation(int(task["id"]), result)
        done.submitted += 1
    return done
