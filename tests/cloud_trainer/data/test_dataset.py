"""Dataset builder against a real S3 server (moto over HTTP), with every kind of bad input."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_trainer.config import DatasetSection, SelectionSection, StorageSection
from cloud_trainer.data.dataset import BuildRequest, DatasetBuilder, DatasetManifest, split_for
from cloud_trainer.data.label_import import import_yolo_labels
from cloud_trainer.data.labeling import SyntheticOracle, YoloLabelFiles
from cloud_trainer.errors import EmptySelectionError, StoragePermissionError
from cloud_trainer.store import ObjectStore
from shared.object_keys import dataset_prefix, label_key
from shared.synth import CLASS_NAMES
from testing.local_services import NanioS3Process
from testing.synthetic_examples import upload_examples

LOOSE = DatasetSection(min_train_images=1, min_holdout_images=1, replay_previous=False)


@pytest.fixture
def fleet_name() -> str:
    """A fixed fleet: the split hashes example keys, which contain it, so a random name
    would make split sizes (and a small selection's held-out count) vary between runs. Each
    test has its own bucket, so a fixed name is still isolated."""
    return "plant-a"


def request(fleet: str, labeler: object, **selection: object) -> BuildRequest:
    return BuildRequest(
        name="line-a",
        fleet=fleet,
        class_names=list(CLASS_NAMES),
        selection=SelectionSection(**selection),  # type: ignore[arg-type]
        dataset=LOOSE,
        labeler=labeler,  # type: ignore[arg-type]
    )


def test_builds_a_frozen_yolo_dataset_and_counts_every_image_left_out(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    good = upload_examples(store, fleet=fleet_name, count=30)
    upload_examples(store, fleet=fleet_name, count=2, start=100, with_truth=False)
    # A corrupt JPEG, an image without sidecar, a broken sidecar, an exact duplicate image.
    store.put(good[0].keys.image.replace("00000", "corrupt"), b"\xff\xd8 not a jpeg")
    store.put(good[0].keys.sidecar.replace("00000", "corrupt"), store.get(good[0].keys.sidecar)[0])
    store.put(good[1].keys.image.replace("00001", "orphan"), store.get(good[1].keys.image)[0])
    store.put(good[2].keys.image.replace("00002", "badjson"), store.get(good[2].keys.image)[0])
    store.put(good[2].keys.sidecar.replace("00002", "badjson"), b"{not json")
    store.put(good[3].keys.image.replace("00003", "dup"), store.get(good[3].keys.image)[0])
    store.put(
        good[3].keys.sidecar.replace("00003", "dup"),
        store.get(good[3].keys.sidecar)[0].replace(b"-00003", b"-dup"),
    )

    built = DatasetBuilder(store, tmp_path).build(request(fleet_name, SyntheticOracle(5)))
    manifest = built.manifest
    assert manifest.skipped == {
        "corrupt_image": 1,
        "missing_sidecar": 1,
        "bad_sidecar": 1,
        "duplicate": 1,
        "unlabeled": 2,
    }
    assert len(manifest.items) == 30
    assert sum(c["images"] for c in manifest.counts.values()) == 30
    assert manifest.sources == {"synthetic": 30}
    # Frozen in the bucket: the manifest (written last) and every file it lists.
    prefix = dataset_prefix("line-a", manifest.version)
    stored = DatasetManifest.model_validate_json(store.get(f"{prefix}/manifest.json")[0])
    assert stored.items == manifest.items
    for item in manifest.items:
        assert store.exists(f"{prefix}/images/{item.split}/{item.stem}.jpg")
        label = store.get(f"{prefix}/labels/{item.split}/{item.stem}.txt")[0].decode()
        assert len(label.splitlines()) == len(item.classes)
    assert (built.data_yaml.parent / "images" / "train").is_dir()
    holdout = built.labelled("holdout")
    assert len(holdout) == manifest.counts["holdout"]["images"]
    # What the gate weighs a class's recall by: the held-out set's labelled boxes.
    boxes = Counter(manifest.classes[c] for image in holdout for c in image.truth.class_id.tolist())
    assert manifest.boxes_per_class("holdout") == dict(boxes) and boxes


def test_the_held_out_set_never_enters_training_in_any_version(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    upload_examples(store, fleet=fleet_name, count=25)
    builder = DatasetBuilder(store, tmp_path)
    first = builder.build(request(fleet_name, SyntheticOracle(5))).manifest
    upload_examples(store, fleet=fleet_name, count=25, start=25)
    second = builder.build(request(fleet_name, SyntheticOracle(5))).manifest
    assert first.version != second.version
    split_of = {i.origin: i.split for i in second.items}
    for item in first.items:
        assert split_of[item.origin] == item.split
    assert {i.split for i in second.items} == {"train", "val", "holdout"}
    assert split_for("line-a", "x", LOOSE) == split_for("line-a", "x", LOOSE)


def test_filters_and_class_quota(store: ObjectStore, fleet_name: str, tmp_path: Path) -> None:
    upload_examples(store, fleet=fleet_name, device="dev-1", count=12)
    upload_examples(store, fleet=fleet_name, device="dev-2", count=12, reasons=("flicker",))
    old = datetime(2026, 1, 1, tzinfo=UTC)
    upload_examples(store, fleet=fleet_name, device="dev-3", count=5, captured_at=old)
    builder = DatasetBuilder(store, tmp_path)
    only_dev2 = builder.build(request(fleet_name, SyntheticOracle(5), devices=["dev-2"]))
    assert {i.origin.split("/")[2] for i in only_dev2.manifest.items} == {"dev-2"}
    flicker = builder.build(request(fleet_name, SyntheticOracle(5), reasons=["flicker"]))
    assert len(flicker.manifest.items) == 12
    recent = builder.build(
        request(fleet_name, SyntheticOracle(5), since=datetime(2026, 6, 1, tzinfo=UTC))
    )
    assert "dev-3" not in {i.origin.split("/")[2] for i in recent.manifest.items}
    capped = builder.build(request(fleet_name, SyntheticOracle(5), max_per_class=2))
    assert capped.manifest.skipped.get("class_quota", 0) > 0


def test_empty_selection_is_a_clear_error(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    with pytest.raises(EmptySelectionError, match="0 training and 0 held-out"):
        DatasetBuilder(store, tmp_path).build(request(fleet_name, SyntheticOracle(5)))
    upload_examples(store, fleet=fleet_name, count=3, with_truth=False)
    with pytest.raises(EmptySelectionError, match="unlabeled"):
        DatasetBuilder(store, tmp_path).build(request(fleet_name, SyntheticOracle(5)))


def test_imported_yolo_labels_are_used_and_bad_ones_reported(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    uploaded = upload_examples(store, fleet=fleet_name, count=32, with_truth=False)
    export = tmp_path / "cvat-export" / "labels"
    export.mkdir(parents=True)
    for example in uploaded[:30]:
        frame_id = example.keys.image.rsplit("/", 1)[1].removesuffix(".jpg")
        (export / f"{frame_id}.txt").write_text("\n".join(example.truth.to_yolo_lines(640, 640)))
    bad_class = uploaded[30].keys.image.rsplit("/", 1)[1].removesuffix(".jpg")
    (export / f"{bad_class}.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    (export / "unknown-frame.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    result = import_yolo_labels(store, export, fleet=fleet_name, classes=CLASS_NAMES)
    assert len(result.imported) == 30
    assert result.unmatched == ["unknown-frame.txt"]
    assert "class id 9" in result.invalid[f"{bad_class}.txt"]
    # A label file that got into the bucket anyway with an out-of-range box is skipped.
    out_of_range = uploaded[31].keys.image.rsplit("/", 1)[1].removesuffix(".jpg")
    store.put(label_key(fleet_name, "dev-1", "2026/11/20", out_of_range), b"0 1.5 0.5 0.1 0.1\n")

    built = DatasetBuilder(store, tmp_path / "work").build(
        request(fleet_name, YoloLabelFiles(store, len(CLASS_NAMES)))
    )
    assert len(built.manifest.items) == 30
    assert built.manifest.skipped == {"unlabeled": 1, "invalid_label": 1}
    assert built.manifest.sources == {"yolo_import": 30}


def test_a_bucket_without_permission_is_a_clear_error(
    nanio: NanioS3Process, nanio_client: object, tmp_path: Path
) -> None:
    nanio_client.create_bucket(Bucket="lf-denied")  # type: ignore[attr-defined]
    wrong = ObjectStore.from_config(
        StorageSection(
            bucket="lf-denied",
            endpoint_url=nanio.endpoint_url,
            access_key_id=nanio.access_key,
            secret_access_key="not-the-secret",  # type: ignore[arg-type]
        )
    )
    with pytest.raises(StoragePermissionError, match="access denied"):
        DatasetBuilder(wrong, tmp_path).build(request("fleet-x", SyntheticOracle(5)))


def test_hostile_examples_are_skipped_with_a_reason(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    """Each of these used to fail the whole run (an OpenCV traceback with an empty reason; a
    zero-area box failing after training, naming no file) or slip into the dataset (a sidecar
    for another device, a class id whose name disagrees with the model line)."""
    good = upload_examples(store, fleet=fleet_name, count=20)

    def plant(source: int, name: str, *, image: bytes | None = None, **edits: object) -> None:
        keys = good[source].keys
        frame = keys.image.rsplit("/", 1)[1].removesuffix(".jpg")
        document = json.loads(store.get(keys.sidecar)[0])
        document["frame_id"] = f"{frame}-{name}"
        where = edits.pop("_device", None)
        document.update(edits)
        image_key = keys.image.replace(frame, f"{frame}-{name}")
        sidecar_key = keys.sidecar.replace(frame, f"{frame}-{name}")
        if where is not None:
            image_key = image_key.replace("/dev-1/", f"/{where}/")
            sidecar_key = sidecar_key.replace("/dev-1/", f"/{where}/")
        store.put(image_key, store.get(keys.image)[0] if image is None else image)
        store.put(sidecar_key, json.dumps(document).encode())

    plant(0, "empty", image=b"")
    plant(1, "truncated", image=store.get(good[1].keys.image)[0][:100])
    plant(2, "forged", _device="edge-99")  # dev-1 sidecar under edge-99 key
    truth = json.loads(store.get(good[3].keys.sidecar)[0])["synthetic_truth"]
    (first, *rest) = truth
    misnamed = {**first, "class_name": "defect" if first["class_name"] != "defect" else "bolt"}
    plant(3, "misnamed", synthetic_truth=[misnamed, *rest])
    x1, y1, _, y2 = first["xyxy"]
    flat = {**first, "xyxy": [x1, y1, x1, y2]}
    plant(4, "flat", synthetic_truth=[flat, *rest])

    built = DatasetBuilder(store, tmp_path).build(request(fleet_name, SyntheticOracle(5)))
    skipped: dict[str, list[str]] = {}
    for skip in built.manifest.skipped_examples:
        skipped.setdefault(skip.reason, []).append(f"{skip.key}: {skip.detail}")
    assert len(skipped["corrupt_image"]) == 2
    assert any("0 bytes" in d and "empty" in d for d in skipped["corrupt_image"])
    bad = skipped["bad_sidecar"]
    assert any("sidecar names" in d and "edge-99" in d for d in bad)
    assert any("in the model line, the sidecar calls it" in d for d in bad)
    (flat_skip,) = skipped["invalid_label"]
    assert "flat" in flat_skip and "1 box(es) of zero width or height" in flat_skip
    assert len(built.manifest.items) == 20
