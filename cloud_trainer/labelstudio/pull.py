"""``cloud-trainer labels pull``: people's finished annotations become YOLO labels.

For every task of the project, one page at a time (memory stays flat in the number of tasks):
the annotation chosen by :func:`~cloud_trainer.labelstudio.tasks.choose_annotation` is
validated, converted and written to ``labels/{fleet}/{device}/{day}/{frame}.txt`` where the
dataset builder reads labels (``labeling.source: yolo_import``), then recorded with its
corrections of the pre-labels in the review ledger.

Resumable and repeatable: a task whose chosen annotation (id and last edit) is already in
the ledger is skipped, an edited one is converted again and replaces its row, and a pull
that stopped halfway simply goes on where the ledger ends. A label is written before its
ledger row, so a crash between the two only makes the next pull write it once more.
Skipped and rejected tasks are recorded with the reason, and a label written earlier for
them is removed: a stale label must not train the next model.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import ObjectNotFoundError
from cloud_trainer.labelstudio.client import LabelStudioClient
from cloud_trainer.labelstudio.push import find_project
from cloud_trainer.labelstudio.reviews import Known, Review, ReviewLedger
from cloud_trainer.labelstudio.tasks import (
    AnnotationRejected,
    Task,
    boxes_from_result,
    choose_annotation,
    corrections,
    parse_model_tag,
    parse_task,
    yolo_lines,
)
from cloud_trainer.store import ObjectStore
from shared.detections import Detections
from shared.errors import ContractError
from shared.messages import utc_now
from shared.object_keys import label_key, parse_hard_example_key

log = logging.getLogger(__name__)

MAX_EXAMPLE_KEY = 512


@dataclass
class PullResult:
    project_id: int
    labeled: int = 0
    skipped: int = 0
    rejected: int = 0
    pending: int = 0
    unchanged: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def summary(self) -> str:
        lines = [
            f"project {self.project_id}: {self.labeled} new or changed label(s), "
            f"{self.unchanged} unchanged, {self.skipped} skipped, {self.rejected} rejected, "
            f"{self.pending} waiting for people, {self.ignored} ignored"
        ]
        return "\n".join(lines + self.problems[:20])


class _Puller:
    def __init__(
        self, store: ObjectStore, ledger: ReviewLedger, config: TrainerConfig, project_id: int
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.fleet = config.model_line.fleet
        self.classes = list(config.model_line.classes)
        self.require_review = config.labeling.label_studio.require_review
        self.project_id = project_id
        self.result = PullResult(project_id)

    def page(self, raw_tasks: list[dict[str, Any]]) -> None:
        tasks: list[tuple[Task, str]] = []
        for raw in raw_tasks:
            try:
                task = parse_task(raw)
            except AnnotationRejected as exc:
                self.result.ignored += 1
                self.result.note(f"ignored task {raw.get('id')!r}: {exc}")
                continue
            key = self._example_key(task)
            if key is not None:
                tasks.append((task, key))
        known = self.ledger.known([key for _, key in tasks])
        for task, key in tasks:
            row = known.get(key)
            if row is not None and row.project_id == self.project_id and row.task_id < task.id:
                # Two tasks for one example (pushes that ran at once): the first one is the
                # example's, always, so pulls do not flip between them. (A project made
                # again after a deletion has new, higher ids: its tasks are not twins.)
                self.result.ignored += 1
                self.result.note(f"ignored task {task.id}: task {row.task_id} has {key} too")
                continue
            self.task(task, key, row)
            known[key] = Known(self.project_id, task.id, None, None)  # a twin later on

    def _example_key(self, task: Task) -> str | None:
        key = task.example_key
        why = None
        if key is None:
            why = "no example_key (not pushed by linefleet)"
        elif len(key) > MAX_EXAMPLE_KEY:
            why = "example_key too long"
        else:
            try:
                parsed = parse_hard_example_key(key)
            except ContractError as exc:
                why = str(exc)
            else:
                if parsed.fleet != self.fleet or parsed.extension != "jpg":
                    why = f"example_key {key!r} is not an image of fleet {self.fleet!r}"
        if why is not None:
            self.result.ignored += 1
            self.result.note(f"ignored task {task.id}: {why}")
            return None
        return key

    def task(self, task: Task, key: str, known: Known | None) -> None:
        choice = choose_annotation(task.annotations, require_review=self.require_review)
        if choice.outcome == "pending":
            self.result.pending += 1
            return
        annotation = choice.annotation
        stamp = None
        if annotation is not None:
            when = annotation.updated_at or annotation.created_at
            stamp = when.isoformat() if when else None
        fingerprint = (annotation.id if annotation else None, stamp)
        if known is not None and (known.annotation_id, known.annotation_stamp) == fingerprint:
            self.result.unchanged += 1  # same annotation, same last edit: done before
            return
        model_name, model_version = self._model_of(task)
        outcome, reason, fixes = choice.outcome, choice.reason, None
        if annotation is not None:
            try:
                boxes = boxes_from_result(annotation.result, self.classes)
            except AnnotationRejected as exc:
                outcome, reason = "rejected", str(exc)
            else:
                self._write_label(key, boxes)
                fixes = corrections(self._prelabels(task), boxes, self.classes)
        if outcome != "labeled":
            self._remove_label(key)
            self.result.note(f"{outcome} task {task.id} ({key}): {reason}")
        setattr(self.result, outcome, getattr(self.result, outcome) + 1)
        self.ledger.record(
            Review(
                example_key=key,
                fleet=self.fleet,
                project_id=self.project_id,
                task_id=task.id,
                annotation_id=fingerprint[0],
                annotation_stamp=stamp,
                outcome=outcome,
                reason=reason,
                model_name=model_name,
                model_version=model_version,
                pulled_at=utc_now(),
            ),
            fixes,
        )

    @staticmethod
    def _model_of(task: Task) -> tuple[str | None, int | None]:
        for prediction in task.predictions:
            name, version = parse_model_tag(prediction.model_version)
            if name is not None:
                return name, version
        return None, None

    def _prelabels(self, task: Task) -> Detections:
        if not task.predictions:
            return Detections.empty()
        try:
            return boxes_from_result(task.predictions[0].result, self.classes)
        except AnnotationRejected as exc:
            self.result.note(f"task {task.id}: pre-labels unreadable ({exc}); counted as none")
            return Detections.empty()

    def _label_key(self, key: str) -> str:
        parsed = parse_hard_example_key(key)
        return label_key(parsed.fleet, parsed.device, parsed.day, parsed.frame_id)

    def _write_label(self, key: str, boxes: Detections) -> None:
        lines = yolo_lines(boxes)
        body = ("\n".join(lines) + "\n") if lines else ""
        self.store.put(self._label_key(key), body.encode(), content_type="text/plain")

    def _remove_label(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self.store.delete(self._label_key(key))


def pull_labels(
    store: ObjectStore, client: LabelStudioClient, ledger: ReviewLedger, config: TrainerConfig
) -> PullResult:
    """Pull every finished annotation of the model line's project (see the module doc)."""
    project_id = find_project(client, config)
    puller = _Puller(store, ledger, config, project_id)
    page_size = config.labeling.label_studio.page_size
    for page in client.task_pages(project_id, with_annotations=True, page_size=page_size):
        puller.page(page)
    result = puller.result
    log.info("pulled labels: %s", result.summary().splitlines()[0])
    return result
