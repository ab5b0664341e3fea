"""Push and pull against a real Label Studio server, with the real S3 server behind it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from cloud_trainer.cli import main
from cloud_trainer.config import TrainerConfig
from cloud_trainer.data.labeling import ExampleForLabeling, YoloLabelFiles
from cloud_trainer.errors import (
    LabelStudioAuthError,
    LabelStudioNotFoundError,
    LabelStudioUnavailableError,
)
from cloud_trainer.fleet.db import open_database
from cloud_trainer.labelstudio.client import LabelStudioClient
from cloud_trainer.labelstudio.pull import pull_labels
from cloud_trainer.labelstudio.push import find_project, push_examples
from cloud_trainer.labelstudio.reviews import ReviewLedger
from cloud_trainer.store import ObjectStore
from shared.hard_examples import HardExampleSidecar
from shared.synth import CLASS_NAMES
from testing.label_studio_annotator import annotate_with_truth
from testing.label_studio_annotator import truth_result as truth_of_example
from testing.local_services import LabelStudioProcess, MotoS3Process, free_port
from testing.synthetic_examples import Uploaded, upload_examples
from tests.cloud_trainer.conftest import storage_section

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def config(
    label_studio: LabelStudioProcess,
    s3_server: MotoS3Process,
    bucket: str,
    tmp_path: Path,
    fleet_name: str,
) -> TrainerConfig:
    return TrainerConfig(
        storage=storage_section(s3_server, bucket),
        model_line={"fleet": fleet_name, "name": "bolts"},
        labeling={
            "label_studio": {
                "url": label_studio.url,
                "token": label_studio.personal_access_token(),
                "page_size": 7,
                "batch_size": 4,
            }
        },
        work_dir=tmp_path / "work",
    )


@pytest.fixture
def client(config: TrainerConfig) -> Iterator[LabelStudioClient]:
    with LabelStudioClient.from_section(config.labeling.label_studio) as made:
        yield made


@pytest.fixture
def ledger(config: TrainerConfig) -> ReviewLedger:
    return ReviewLedger(open_database(config.fleet.url(config.work_dir)))


def upload(store: ObjectStore, config: TrainerConfig, count: int, **kwargs: Any) -> list[Uploaded]:
    return upload_examples(
        store,
        fleet=config.model_line.fleet,
        count=count,
        with_predictions=True,
        model=("bolts", 3),
        **kwargs,
    )


def tasks_by_key(client: LabelStudioClient, project_id: int) -> dict[str, dict[str, Any]]:
    return {
        t["data"]["example_key"]: t for t in client.iter_tasks(project_id, with_annotations=True)
    }


def test_push_is_idempotent_most_useful_first_with_prelabels(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient
) -> None:
    random = upload(store, config, 5, reasons=("random",), priority=0.5)
    defects = upload(store, config, 3, reasons=("defect",), priority=5.0, start=100)
    first = push_examples(store, client, config, limit=6)
    assert (first.pushed, first.left_for_later) == (6, 2)
    again = push_examples(store, client, config)
    assert (again.pushed, again.already_there) == (2, 6)
    assert push_examples(store, client, config).pushed == 0

    tasks = list(client.iter_tasks(first.project_id, with_annotations=True))
    assert len(tasks) == 8
    order = [t["data"]["example_key"] for t in tasks]  # id order: the order people get them
    assert set(order[:3]) == {u.keys.image for u in defects}
    assert {u.keys.image for u in random} == set(order[3:])
    task = tasks[0]
    assert "defect" in task["data"]["caption"] and "bolts@3" in task["data"]["caption"]
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "bolts@3"
    truth = next(u for u in defects if u.keys.image == task["data"]["example_key"]).truth
    assert len(prediction["result"]) == len(truth)
    project = client.project(first.project_id)
    assert all(f'value="{name}"' in project["label_config"] for name in CLASS_NAMES)
    # The model line gains a class: the project's labeling interface gains it too.
    grown = config.model_copy(
        update={
            "model_line": config.model_line.model_copy(
                update={"classes": [*CLASS_NAMES, "scratch"]}
            )
        }
    )
    assert push_examples(store, client, grown).project_id == first.project_id
    assert 'value="scratch"' in client.project(first.project_id)["label_config"]


def test_images_come_from_the_store_through_label_studio(
    store: ObjectStore,
    config: TrainerConfig,
    client: LabelStudioClient,
    label_studio: LabelStudioProcess,
) -> None:
    uploaded = upload(store, config, 1)
    project_id = push_examples(store, client, config).project_id
    task_id = next(iter(tasks_by_key(client, project_id).values()))["id"]
    resolved = client.task(task_id, resolve_uri=True)["data"]["image"]
    assert resolved.startswith("/tasks/")  # Label Studio presigns it, nothing was copied
    image = httpx.get(
        label_studio.url + resolved,
        headers={"Authorization": f"Token {label_studio.legacy_token}"},
        follow_redirects=True,
    )
    assert image.status_code == 200
    assert image.content == store.get(uploaded[0].keys.image)[0]


def annotate(
    client: LabelStudioClient, task: dict[str, Any], result: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    return client.create_annotation(int(task["id"]), result, **kwargs)


def truth_result(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    result = truth_of_example(store, key, list(CLASS_NAMES))
    assert result is not None, "upload() attaches the truth"
    return result


def read_label(store: ObjectStore, config: TrainerConfig, uploaded: Uploaded) -> Any:
    body, _ = store.get(uploaded.keys.sidecar)
    sidecar = HardExampleSidecar.model_validate_json(body)
    image = np.zeros((sidecar.image_height, sidecar.image_width, 3), np.uint8)
    day = uploaded.keys.image.split("/")[3:6]
    example = ExampleForLabeling("/".join(day), sidecar, image)
    return YoloLabelFiles(store, len(CLASS_NAMES)).label(example)


def test_pull_converts_records_and_rejects_with_reasons(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient, ledger: ReviewLedger
) -> None:
    uploaded = upload(store, config, 8)
    project_id = push_examples(store, client, config).project_id
    tasks = tasks_by_key(client, project_id)
    good, fixed, skipped, unknown, outside, zero, pending, _ = (
        tasks[u.keys.image] for u in uploaded
    )
    annotate(client, good, truth_result(store, good["data"]["example_key"]))
    corrected = truth_result(store, fixed["data"]["example_key"])
    removed = corrected.pop()  # the person deletes one pre-label...
    corrected[0]["value"]["rectanglelabels"] = (
        ["defect"] if corrected[0]["value"]["rectanglelabels"] != ["defect"] else ["bolt"]
    )  # ...and relabels another
    annotate(client, fixed, corrected)
    annotate(client, skipped, [], was_cancelled=True)
    bad = truth_result(store, unknown["data"]["example_key"])
    bad[0]["value"]["rectanglelabels"] = ["screw"]
    annotate(client, unknown, bad)
    far = truth_result(store, outside["data"]["example_key"])
    far[0]["value"]["x"] = 180.0
    annotate(client, outside, far)
    flat = truth_result(store, zero["data"]["example_key"])
    flat[0]["value"]["height"] = 0.0
    annotate(client, zero, flat)
    del pending, removed

    result = pull_labels(store, client, ledger, config)
    assert (result.labeled, result.skipped, result.rejected, result.pending) == (2, 1, 3, 2)
    assert any("unknown label 'screw'" in p for p in result.problems)
    labels = read_label(store, config, uploaded[0])
    assert len(labels) == len(uploaded[0].truth)
    assert labels.class_id.tolist() == uploaded[0].truth.class_id.tolist()
    assert abs(labels.xyxy - uploaded[0].truth.xyxy).max() < 1.0  # pixels
    for rejected in uploaded[3:6]:
        assert not store.exists(
            rejected.keys.image.replace("hard-examples", "labels", 1).removesuffix(".jpg") + ".txt"
        )
    fleet = config.model_line.fleet
    assert ledger.outcomes(fleet) == {"labeled": 2, "skipped": 1, "rejected": 3}
    reasons = {p["reason"] for p in ledger.problems(fleet)}
    assert any("outside the image" in r for r in reasons)
    assert any("zero size" in r for r in reasons)
    quality = ledger.quality(fleet)
    assert {(q.model_name, q.model_version) for q in quality} == {("bolts", 3)}
    assert sum(q.removed for q in quality) == 1
    assert sum(q.relabeled for q in quality) == 1

    # A second pull changes nothing; an edit after the pull replaces the label and its
    # corrections instead of counting twice.
    again = pull_labels(store, client, ledger, config)
    assert (again.labeled, again.unchanged) == (0, 6)
    good_annotation = client.task(int(good["id"]))["annotations"][0]
    client.update_annotation(int(good_annotation["id"]), {"result": []})
    edited = pull_labels(store, client, ledger, config)
    assert (edited.labeled, edited.unchanged) == (1, 5)
    assert len(read_label(store, config, uploaded[0])) == 0
    removed_now = sum(q.removed for q in ledger.quality(fleet))
    assert removed_now == 1 + len(uploaded[0].truth)


def test_review_required_takes_only_accepted_annotations(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient, ledger: ReviewLedger
) -> None:
    upload(store, config, 2)
    reviewed = config.model_copy(
        update={
            "labeling": config.labeling.model_copy(
                update={
                    "label_studio": config.labeling.label_studio.model_copy(
                        update={"require_review": True}
                    )
                }
            )
        }
    )
    project_id = push_examples(store, client, reviewed).project_id
    first, second = tasks_by_key(client, project_id).values()
    annotate(client, first, truth_result(store, first["data"]["example_key"]))
    accepted = annotate(client, second, truth_result(store, second["data"]["example_key"]))
    client.update_annotation(int(accepted["id"]), {"ground_truth": True})
    result = pull_labels(store, client, ledger, reviewed)
    assert (result.labeled, result.pending) == (1, 1)


class FailingAfter(LabelStudioClient):
    """Label Studio going away in the middle of a pull."""

    pages_left = 1

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path == "/api/tasks/":
            if self.pages_left == 0:
                raise LabelStudioUnavailableError("gone")
            self.pages_left -= 1
        return super().request(method, path, **kwargs)


def test_a_pull_cut_short_resumes_without_duplicates(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient, ledger: ReviewLedger
) -> None:
    upload(store, config, 12)
    project_id = push_examples(store, client, config).project_id
    assert annotate_with_truth(client, project_id, store, CLASS_NAMES).submitted == 12
    section = config.labeling.label_studio
    token = section.token.get_secret_value() if section.token else ""
    with (
        FailingAfter(label_studio_url(config), token) as flaky,
        pytest.raises(LabelStudioUnavailableError),
    ):
        pull_labels(store, flaky, ledger, config)
    partial = ledger.outcomes(config.model_line.fleet)["labeled"]
    assert partial == 7  # the first page (page_size 7) landed
    rest = pull_labels(store, client, ledger, config)
    assert (rest.labeled, rest.unchanged) == (12 - partial, partial)
    assert ledger.outcomes(config.model_line.fleet)["labeled"] == 12


def label_studio_url(config: TrainerConfig) -> str:
    assert config.labeling.label_studio.url is not None
    return config.labeling.label_studio.url


def test_bad_token_down_server_and_deleted_project_are_clear_errors(
    store: ObjectStore,
    config: TrainerConfig,
    client: LabelStudioClient,
    ledger: ReviewLedger,
    label_studio: LabelStudioProcess,
) -> None:
    with (
        LabelStudioClient(label_studio_url(config), "not-a-token") as wrong,
        pytest.raises(LabelStudioAuthError, match="refused the token"),
    ):
        push_examples(store, wrong, config)
    forged = label_studio.personal_access_token()[:-4] + "AAAA"
    with (
        LabelStudioClient(label_studio_url(config), forged) as wrong,
        pytest.raises(LabelStudioAuthError),
    ):
        wrong.find_project("x")
    with (
        LabelStudioClient(f"http://127.0.0.1:{free_port()}", "t", timeout_s=2) as down,
        pytest.raises(LabelStudioUnavailableError, match="did not answer"),
    ):
        push_examples(store, down, config)
    with pytest.raises(LabelStudioNotFoundError, match="labels push"):
        pull_labels(store, client, ledger, config)

    # The legacy token works where the organisation enabled it.
    upload(store, config, 3)
    with LabelStudioClient(label_studio_url(config), label_studio.legacy_token) as legacy:
        project_id = push_examples(store, legacy, config).project_id
    annotate_with_truth(client, project_id, store, CLASS_NAMES)
    assert pull_labels(store, client, ledger, config).labeled == 3
    client.request("DELETE", f"/api/projects/{project_id}/")
    with pytest.raises(LabelStudioNotFoundError):
        find_project(client, config)
    again = push_examples(store, client, config)  # a deleted project is made again
    assert again.pushed == 3 and again.project_id != project_id
    # Its tasks are the examples' now (not twins of the deleted project's).
    for task in client.iter_tasks(again.project_id, with_annotations=False):
        client.create_annotation(int(task["id"]), [])
    relabeled = pull_labels(store, client, ledger, config)
    assert (relabeled.labeled, relabeled.ignored) == (3, 0)


def test_cli_push_pull_quality(
    store: ObjectStore,
    config: TrainerConfig,
    client: LabelStudioClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    s3_server: MotoS3Process,
) -> None:
    upload(store, config, 3)
    path = tmp_path / "trainer.yaml"
    data = config.model_dump(mode="json", exclude_none=True)
    data["storage"]["secret_access_key"] = s3_server.secret_key
    data["labeling"]["label_studio"]["token"] = client._token
    path.write_text(yaml.safe_dump(data))
    assert main(["labels", "push", "--config", str(path)]) == 0
    assert "pushed 3 task(s)" in capsys.readouterr().out
    annotate_with_truth(client, find_project(client, config), store, CLASS_NAMES, limit=2)
    assert main(["labels", "pull", "--config", str(path)]) == 0
    assert "2 new or changed label(s)" in capsys.readouterr().out
    assert main(["labels", "quality", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 labeled" in out and "bolts@3" in out


def test_a_server_that_hangs_is_unavailable_not_a_hang(
    store: ObjectStore, config: TrainerConfig
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with (
            LabelStudioClient(url, "t", timeout_s=0.5) as slow,
            pytest.raises(LabelStudioUnavailableError, match="ReadTimeout"),
        ):
            slow.find_project("x")
        assert time.monotonic() - started < 10  # three short tries, not a hang


def test_foreign_and_hostile_tasks_are_ignored_with_the_reason(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient, ledger: ReviewLedger
) -> None:
    upload(store, config, 1)
    project_id = push_examples(store, client, config).project_id
    fleet = config.model_line.fleet
    keys: list[Any] = [
        None,  # someone's own task, no example key
        "hard-examples/other-fleet/d/2026/11/20/f.jpg",
        f"hard-examples/{fleet}/../../labels/x.jpg",
        f"hard-examples/{fleet}/d/2026/11/20/f.json",
        ["not", "a", "string"],
    ]
    hostile = [
        {"data": {"image": "s3://x/y.jpg"} | ({"example_key": k} if k is not None else {})}
        for k in keys
    ]
    ids = client.import_tasks(project_id, hostile)
    for task_id in ids:
        client.create_annotation(task_id, [])
    result = pull_labels(store, client, ledger, config)
    assert result.ignored == len(hostile) and result.labeled == 0
    assert any("not an image of fleet" in p for p in result.problems)
    assert any("unsafe object key" in p for p in result.problems)
    assert not any(i.key.startswith("labels/") for i in store.list("labels/"))


def test_two_tasks_for_one_example_do_not_flip_its_label(
    store: ObjectStore, config: TrainerConfig, client: LabelStudioClient, ledger: ReviewLedger
) -> None:
    """Two pushes that ran at once can import an example twice: the first task is the
    example's, in every pull."""
    (example,) = upload(store, config, 1)
    project_id = push_examples(store, client, config).project_id
    (task,) = tasks_by_key(client, project_id).values()
    (twin_id,) = client.import_tasks(project_id, [{"data": task["data"]}])
    annotate(client, task, truth_result(store, example.keys.image))
    client.create_annotation(twin_id, [])  # the twin says: nothing there
    for _ in range(2):
        result = pull_labels(store, client, ledger, config)
        assert result.ignored == 1 and f"task {task['id']} has" in result.problems[0]
        assert len(read_label(store, config, example)) == len(example.truth)
