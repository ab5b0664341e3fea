"""Hard examples + labels -> a frozen, versioned YOLO dataset in ``datasets/{name}/{version}/``.

Steps: list the examples (key filters), read each sidecar (time and sampler filters), fetch and
decode the image (corrupt ones are skipped), label it (unlabelled/invalid are skipped), drop
exact duplicates, split by a hash of the example's identity, cap classes, then upload images,
labels and a manifest (written last: a dataset without a manifest does not exist).

The split is a pure function of the model line and the example key: an example held out once
is held out in every later dataset version, so the held-out set never leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from cloud_trainer.config import DatasetSection, SelectionSection
from cloud_trainer.data.labeling import ExampleForLabeling, LabelInvalid, LabelMissing, LabelSource
from cloud_trainer.errors import DatasetError, EmptySelectionError, StorageError
from cloud_trainer.release.evaluate import LabelledImage
from cloud_trainer.store import ObjectInfo, ObjectStore
from shared.detections import Detections
from shared.errors import ContractError
from shared.hard_examples import HardExampleSidecar
from shared.identifiers import Identifier
from shared.image_header import ImageHeaderError, image_size
from shared.messages import utc_now
from shared.object_keys import HARD_EXAMPLES, dataset_prefix, parse_hard_example_key

log = logging.getLogger(__name__)

Split = Literal["train", "val", "holdout"]
SPLITS: tuple[Split, ...] = ("train", "val", "holdout")
MAX_SIDECAR_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_REPORTED_SKIPS = 200
TRANSFER_THREADS = 8


# ----------------------------------------------------------------------------- contracts
class DatasetItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stem: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
    split: Split
    origin: str = Field(max_length=1024, description="hard-example key base or replayed item")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    labeler: str = Field(max_length=64)
    classes: list[int] = Field(default_factory=list, description="class id of each object")


class SkippedExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    reason: str
    detail: str = ""


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: Identifier
    version: Identifier
    created_at: AwareDatetime
    classes: list[str]
    parent: Identifier | None = None
    counts: dict[str, dict[str, int]] = Field(description="split -> images/objects per class")
    sources: dict[str, int] = Field(description="labeler (or 'replay') -> images")
    skipped: dict[str, int] = Field(default_factory=dict)
    skipped_examples: list[SkippedExample] = Field(default_factory=list)
    selected_until: AwareDatetime | None = None
    items: list[DatasetItem]

    def split_items(self, split: Split) -> list[DatasetItem]:
        return [i for i in self.items if i.split == split]

    def boxes_per_class(self, split: Split) -> dict[str, int]:
        """Labelled boxes of each class present in ``split``, from :attr:`counts` (the gate
        weighs a change of a class's recall by them)."""
        return {name: n for name, n in self.counts.get(split, {}).items() if name != "images" and n}


def split_for(model_line: str, origin: str, config: DatasetSection) -> Split:
    """Stable split from the example identity (not its content: a re-encoded copy of the same
    frame stays where it was)."""
    digest = hashlib.sha256(f"{model_line}\n{origin}".encode()).digest()
    percent = int.from_bytes(digest[:8], "big") % 10_000 / 100.0
    if percent < config.holdout_percent:
        return "holdout"
    if percent < config.holdout_percent + config.val_percent:
        return "val"
    return "train"


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class ExampleRef:
    base: str
    day: str
    image: ObjectInfo
    sidecar: ObjectInfo


@dataclass
class Selection:
    examples: list[ExampleRef]
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: list[SkippedExample] = field(default_factory=list)

    def skip(self, key: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < MAX_REPORTED_SKIPS:
            self.skipped_examples.append(
                SkippedExample(key=key, reason=reason, detail=detail[:300])
            )


def select_examples(store: ObjectStore, fleet: str, selection: SelectionSection) -> Selection:
    """Hard examples with both image and sidecar, filtered by device and day (the cheap filters
    that need no download). Orphans are reported, not fatal: an upload may be in progress."""
    prefixes = [f"{HARD_EXAMPLES}/{fleet}/{d}/" for d in selection.devices] or [
        f"{HARD_EXAMPLES}/{fleet}/"
    ]
    groups: dict[str, dict[str, ObjectInfo]] = defaultdict(dict)
    days: dict[str, str] = {}
    result = Selection(examples=[])
    since_day = selection.since.strftime("%Y/%m/%d") if selection.since else None
    for prefix in prefixes:
        for info in store.list(prefix):
            try:
                parsed = parse_hard_example_key(info.key)
            except ContractError as exc:
                result.skip(info.key, "bad_key", str(exc))
                continue
            if since_day is not None and parsed.day < since_day:
                continue
            base = info.key.rsplit(".", 1)[0]
            groups[base][parsed.extension] = info
            days[base] = parsed.day
    for base in sorted(groups):
        parts = groups[base]
        if "jpg" not in parts or "json" not in parts:
            missing = "image" if "jpg" not in parts else "sidecar"
            result.skip(base, f"missing_{missing}", "the upload may still be in progress")
            continue
        result.examples.append(ExampleRef(base, days[base], parts["jpg"], parts["json"]))
    return result


# ----------------------------------------------------------------------------- building
@dataclass(frozen=True)
class _Prepared:
    ref: ExampleRef
    jpeg: bytes
    sha256: str
    labels: Detections
    width: int
    height: int
    priority: float


@dataclass
class BuildRequest:
    name: str
    fleet: str
    class_names: list[str]
    selection: SelectionSection
    dataset: DatasetSection
    labeler: LabelSource
    parent: str | None = None  # dataset version of the production model, for replay


def _prepare(
    store: ObjectStore, ref: ExampleRef, request: BuildRequest, outcome: Selection
) -> _Prepared | None:
    selection = request.selection
    try:
        sidecar = read_sidecar(store, ref, request.class_names)
    except SidecarProblem as problem:
        outcome.skip(ref.base, problem.reason, problem.detail)
        return None
    if selection.since is not None and sidecar.captured_at < selection.since:
        return None
    if selection.reasons and not set(selection.reasons) & set(sidecar.reasons):
        return None
    try:
        jpeg, _ = store.get(ref.image.key, max_bytes=selection.max_image_bytes)
    except StorageError as exc:
        outcome.skip(ref.base, "unreadable", str(exc))
        return None
    # The header first: an empty or truncated file, or one declaring another size than its
    # sidecar (a decompression bomb among them), is skipped before anything is decoded.
    try:
        declared = image_size(jpeg)
    except ImageHeaderError as exc:
        outcome.skip(ref.base, "corrupt_image", f"{ref.image.key}: {exc} ({len(jpeg)} bytes)")
        return None
    if declared != (sidecar.image_width, sidecar.image_height):
        outcome.skip(
            ref.base,
            "corrupt_image",
            f"image header says {declared[0]}x{declared[1]}, "
            f"sidecar says {sidecar.image_width}x{sidecar.image_height}",
        )
        return None
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        outcome.skip(ref.base, "corrupt_image", f"{ref.image.key}: not a decodable image")
        return None
    image = np.asarray(decoded, dtype=np.uint8)
    height, width = image.shape[:2]
    if (width, height) != (sidecar.image_width, sidecar.image_height):
        outcome.skip(
            ref.base,
            "corrupt_image",
            f"image is {width}x{height}, sidecar says {sidecar.image_width}x{sidecar.image_height}",
        )
        return None
    try:
        labels = request.labeler.label(ExampleForLabeling(ref.day, sidecar, image))
    except LabelMissing as exc:
        outcome.skip(ref.base, "unlabeled", str(exc))
        return None
    except LabelInvalid as exc:
        outcome.skip(ref.base, "invalid_label", str(exc))
        return None
    degenerate = _degenerate_boxes(labels)
    if degenerate:
        # A zero-area box passed into the held-out split failed the run after training,
        # naming no file: refuse it here, with the example's name.
        outcome.skip(ref.base, "invalid_label", f"{degenerate} box(es) of zero width or height")
        return None
    return _Prepared(
        ref, jpeg, hashlib.sha256(jpeg).hexdigest(), labels, width, height, sidecar.priority
    )


class SidecarProblem(Exception):  # noqa: N818 - a reported skip, not an error
    """The example's sidecar cannot be used: ``reason`` is the skip's code (``bad_sidecar``,
    ``unreadable``), ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_sidecar(store: ObjectStore, ref: ExampleRef, class_names: list[str]) -> HardExampleSidecar:
    """The example's sidecar, read, validated and checked against its key and the model
    line's classes (the dataset builder and ``labels push`` both trust nothing less)."""
    try:
        raw, _ = store.get(ref.sidecar.key, max_bytes=MAX_SIDECAR_BYTES)
        sidecar = HardExampleSidecar.model_validate_json(raw)
    except ValidationError as exc:
        raise SidecarProblem("bad_sidecar", exc.errors()[0]["msg"]) from exc
    except StorageError as exc:
        raise SidecarProblem("unreadable", str(exc)) from exc
    problem = sidecar_disagreement(ref, sidecar, class_names)
    if problem is not None:
        raise SidecarProblem("bad_sidecar", problem)
    return sidecar


def sidecar_disagreement(
    ref: ExampleRef, sidecar: HardExampleSidecar, class_names: list[str]
) -> str | None:
    """Why a sidecar cannot be trusted, or None: it must name the fleet and device its key
    says, and each prediction's class name must be the model line's name for its class id."""
    try:
        key = parse_hard_example_key(ref.sidecar.key)
    except ContractError as exc:
        return str(exc)
    if (sidecar.fleet, sidecar.device_id) != (key.fleet, key.device):
        return (
            f"sidecar names {sidecar.fleet}/{sidecar.device_id}, its key {key.fleet}/{key.device}"
        )
    for record in [*sidecar.predictions, *(sidecar.synthetic_truth or [])]:
        if record.class_id >= len(class_names):
            return f"class id {record.class_id} is not one of the {len(class_names)} classes"
        if record.class_name is not None and record.class_name != class_names[record.class_id]:
            return (
                f"class id {record.class_id} is {class_names[record.class_id]!r} in the model "
                f"line, the sidecar calls it {record.class_name!r}"
            )
    return None


def _degenerate_boxes(labels: Detections) -> int:
    if len(labels) == 0:
        return 0
    boxes = labels.xyxy
    return int(np.count_nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])))


def _cap_classes(items: list[_Prepared], cap: int | None) -> tuple[list[_Prepared], int]:
    """Keep an item while any of its classes (or 'background') is under the cap; highest
    priority first, so the most informative examples win."""
    if cap is None:
        return items, 0
    seen: Counter[int] = Counter()
    kept: list[_Prepared] = []
    for item in sorted(items, key=lambda i: (-i.priority, i.ref.base)):
        classes = set(item.labels.class_id.tolist()) or {-1}
        if any(seen[c] < cap for c in classes):
            kept.append(item)
            seen.update(classes)
    return kept, len(items) - len(kept)


def _yolo_text(labels: Detections, width: int, height: int) -> str:
    rows = labels.to_yolo_lines(width, height)
    return "\n".join(rows) + ("\n" if rows else "")


def _stem(origin: str) -> str:
    return hashlib.sha256(origin.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class BuiltDataset:
    manifest: DatasetManifest
    root: Path  # local YOLO folder
    data_yaml: Path

    def image_paths(self, split: Split) -> list[Path]:
        """The images of ``split``, without reading them (e.g. to calibrate INT8 on)."""
        return [
            self.root / "images" / split / f"{item.stem}.jpg"
            for item in self.manifest.split_items(split)
        ]

    def labelled(self, split: Split) -> list[LabelledImage]:
        """Images of ``split`` with their labels, for evaluation."""
        return [
            read_labelled(
                self.root / "images" / split / f"{item.stem}.jpg",
                self.root / "labels" / split / f"{item.stem}.txt",
            )
            for item in self.manifest.split_items(split)
        ]


def read_labelled(image: Path, label: Path) -> LabelledImage:
    """``image`` with the boxes of its YOLO ``label`` file (normalised: the image is read for
    its size)."""
    pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise DatasetError(f"dataset image {image} is unreadable")
    height, width = pixels.shape[:2]
    truth = Detections.from_yolo_lines(label.read_text().splitlines(), width, height)
    return LabelledImage(image, truth)


def labelled_folder(root: Path, split: str) -> list[LabelledImage]:
    """The ``.jpg`` images of ``split`` in a YOLO folder without a manifest (``images/{split}``
    beside ``labels/{split}``, as ``shared.synth.write_yolo_dataset`` writes), with labels."""
    return [
        read_labelled(image, root / "labels" / split / f"{image.stem}.txt")
        for image in sorted((root / "images" / split).glob("*.jpg"))
    ]


def write_data_yaml(root: Path, class_names: Iterable[str]) -> Path:
    names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(class_names))
    path = root / "data.yaml"
    path.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
        f"test: images/holdout\nnames:\n{names}\n"
    )
    return path


class DatasetBuilder:
    def __init__(self, store: ObjectStore, work_dir: Path) -> None:
        self.store = store
        self.work_dir = work_dir

    def select(self, request: BuildRequest) -> Selection:
        return select_examples(self.store, request.fleet, request.selection)

    def build(
        self,
        request: BuildRequest,
        selection: Selection | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BuiltDataset:
        selection = selection or self.select(request)
        refs = selection.examples
        if request.selection.max_examples is not None:
            newest_first = sorted(refs, key=lambda r: r.image.last_modified, reverse=True)
            refs = newest_first[: request.selection.max_examples]
        prepared: list[_Prepared] = []
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            futures = [pool.submit(_prepare, self.store, r, request, selection) for r in refs]
            for done, future in enumerate(futures, start=1):
                item = future.result()
                if item is not None:
                    prepared.append(item)
                if progress is not None:
                    progress(done, len(futures))
        unique: dict[str, _Prepared] = {}
        for item in sorted(prepared, key=lambda i: i.ref.base):
            if item.sha256 in unique:
                first = unique[item.sha256].ref.base
                selection.skip(item.ref.base, "duplicate", f"same image as {first}")
                continue
            unique[item.sha256] = item
        by_split: dict[Split, list[_Prepared]] = {s: [] for s in SPLITS}
        for item in unique.values():
            by_split[split_for(request.name, item.ref.base, request.dataset)].append(item)
        by_split["train"], capped = _cap_classes(by_split["train"], request.selection.max_per_class)
        if capped:
            selection.skipped["class_quota"] += capped
        replayed = self._replay(request, exclude={i.sha256 for i in unique.values()})
        return self._freeze(request, by_split, replayed, selection)

    # ------------------------------------------------------------------ replay
    def _replay(self, request: BuildRequest, exclude: set[str]) -> list[tuple[DatasetItem, Path]]:
        """Items of the parent dataset (already downloaded), so fine-tuning does not forget
        what the production model knew."""
        if not request.dataset.replay_previous or request.parent is None:
            return []
        parent = self.fetch(request.name, request.parent)
        cap = request.dataset.replay_max_train_images
        items: list[tuple[DatasetItem, Path]] = []
        train_kept = 0
        for item in sorted(parent.manifest.items, key=lambda i: i.stem):
            if item.sha256 in exclude:
                continue
            if item.split == "train":
                if cap is not None and train_kept >= cap:
                    continue
                train_kept += 1
            image = parent.root / "images" / item.split / f"{item.stem}.jpg"
            items.append((item.model_copy(update={"labeler": "replay"}), image))
        return items

    # ------------------------------------------------------------------ freezing
    def _freeze(
        self,
        request: BuildRequest,
        by_split: dict[Split, list[_Prepared]],
        replayed: list[tuple[DatasetItem, Path]],
        selection: Selection,
    ) -> BuiltDataset:
        items: list[DatasetItem] = []
        payload: dict[str, tuple[bytes | Path, str]] = {}  # stem -> (image, label text)
        for split in SPLITS:
            for item in by_split[split]:
                stem = _stem(item.ref.base)
                items.append(
                    DatasetItem(
                        stem=stem,
                        split=split,
                        origin=item.ref.base,
                        sha256=item.sha256,
                        labeler=request.labeler.name,
                        classes=[int(c) for c in item.labels.class_id],
                    )
                )
                payload[stem] = (item.jpeg, _yolo_text(item.labels, item.width, item.height))
        parent_root = self.work_dir / "datasets" / request.name / str(request.parent)
        for replayed_item, image_path in replayed:
            label_file = parent_root / "labels" / replayed_item.split / f"{replayed_item.stem}.txt"
            items.append(replayed_item)
            payload[replayed_item.stem] = (image_path, label_file.read_text())
        train = sum(1 for i in items if i.split == "train")
        holdout = sum(1 for i in items if i.split == "holdout")
        wanted = request.dataset
        if train < wanted.min_train_images or holdout < wanted.min_holdout_images:
            raise EmptySelectionError(
                f"dataset would have {train} training and {holdout} held-out images (need "
                f"{request.dataset.min_train_images} and {request.dataset.min_holdout_images}); "
                f"skipped: {dict(selection.skipped) or 'none'}; "
                f"{len(selection.examples)} example(s) matched the key filters"
            )
        digest = hashlib.sha256()
        for frozen in sorted(items, key=lambda i: i.stem):
            digest.update(f"{frozen.stem} {frozen.split} {frozen.sha256}\n".encode())
            digest.update(payload[frozen.stem][1].encode())
        now = utc_now()
        version = f"{now:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"
        manifest = DatasetManifest(
            name=request.name,
            version=version,
            created_at=now,
            classes=request.class_names,
            parent=request.parent,
            counts=_counts(items, request.class_names),
            sources=dict(Counter(i.labeler for i in items)),
            skipped=dict(selection.skipped),
            skipped_examples=selection.skipped_examples,
            selected_until=max((r.image.last_modified for r in selection.examples), default=None),
            items=items,
        )
        root = self.work_dir / "datasets" / request.name / version
        for frozen in items:
            image, label = payload[frozen.stem]
            image_path = root / "images" / frozen.split / f"{frozen.stem}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(image, Path):
                image_path.write_bytes(image.read_bytes())
            else:
                image_path.write_bytes(image)
            label_path = root / "labels" / frozen.split / f"{frozen.stem}.txt"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text(label)
        self.upload(root, manifest)
        return BuiltDataset(manifest, root, write_data_yaml(root, request.class_names))

    def upload(self, root: Path, manifest: DatasetManifest) -> None:
        """Upload a local YOLO folder as ``datasets/{name}/{version}/``, manifest last."""
        prefix = dataset_prefix(manifest.name, manifest.version)
        files = [p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml"]
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            for future in [
                pool.submit(self.store.upload, p, f"{prefix}/{p.relative_to(root).as_posix()}")
                for p in files
            ]:
                future.result()
        body = manifest.model_dump_json(indent=1).encode()
        (root / "manifest.json").write_bytes(body)
        self.store.put(f"{prefix}/manifest.json", body, content_type="application/json")

    # ------------------------------------------------------------------ fetching
    def fetch(self, name: str, version: str) -> BuiltDataset:
        """A frozen dataset version, downloaded into the work dir (reused when already there)."""
        prefix = dataset_prefix(name, version)
        root = self.work_dir / "datasets" / name / version
        local_manifest = root / "manifest.json"
        try:
            if local_manifest.is_file():
                manifest = DatasetManifest.model_validate_json(local_manifest.read_bytes())
            else:
                body, _ = self.store.get(f"{prefix}/manifest.json", max_bytes=MAX_MANIFEST_BYTES)
                manifest = DatasetManifest.model_validate_json(body)
        except ValidationError as exc:
            raise DatasetError(f"dataset {name}/{version} has an invalid manifest: {exc}") from exc
        wanted = []
        for item in manifest.items:
            for kind, ext in (("images", "jpg"), ("labels", "txt")):
                path = root / kind / item.split / f"{item.stem}.{ext}"
                if not path.is_file():
                    wanted.append((f"{prefix}/{kind}/{item.split}/{item.stem}.{ext}", path))
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            for future in [pool.submit(self.store.download, k, p) for k, p in wanted]:
                future.result()
        if not local_manifest.is_file():
            local_manifest.write_bytes(manifest.model_dump_json(indent=1).encode())
        return BuiltDataset(manifest, root, write_data_yaml(root, manifest.classes))


def _counts(items: list[DatasetItem], class_names: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        chosen = [i for i in items if i.split == split]
        objects = Counter(c for i in chosen for c in i.classes)
        counts[split] = {"images": len(chosen)} | {
            name: objects.get(cid, 0) for cid, name in enumerate(class_names)
        }
    return counts


def register_folder_dataset(
    store: ObjectStore,
    work_dir: Path,
    *,
    name: str,
    version: str,
    folder: Path,
    class_names: list[str],
    dataset: DatasetSection,
) -> DatasetManifest:
    """Freeze an existing YOLO folder (``images/{train,val}``, ``labels/...``) as a dataset
    version: how a bootstrap model's training data becomes replayable."""
    items: list[DatasetItem] = []
    root = work_dir / "datasets" / name / version
    for image in sorted((folder / "images").rglob("*.jpg")):
        relative = image.relative_to(folder / "images")
        label = folder / "labels" / relative.with_suffix(".txt")
        origin = f"{name}-{version}/{relative.as_posix()}"
        if not label.is_file():
            continue
        data = image.read_bytes()
        text = label.read_text()
        try:
            image_size(data)
        except ImageHeaderError as exc:
            raise DatasetError(f"{image} is not a usable image: {exc}") from exc
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise DatasetError(f"{image} is not a decodable image")
        height, width = decoded.shape[:2]
        labels = Detections.from_yolo_lines(
            text.splitlines(), width, height, num_classes=len(class_names)
        )
        split = split_for(name, origin, dataset)
        stem = _stem(origin)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{stem}.jpg").write_bytes(data)
        (root / "labels" / split / f"{stem}.txt").write_text(text)
        items.append(
            DatasetItem(
                stem=stem,
                split=split,
                origin=origin,
                sha256=hashlib.sha256(data).hexdigest(),
                labeler="imported",
                classes=[int(c) for c in labels.class_id],
            )
        )
    if not items:
        raise EmptySelectionError(f"{folder} holds no labelled .jpg under images/")
    manifest = DatasetManifest(
        name=name,
        version=version,
        created_at=utc_now(),
        classes=class_names,
        counts=_counts(items, class_names),
        sources={"imported": len(items)},
        items=items,
    )
    DatasetBuilder(store, work_dir).upload(root, manifest)
    write_data_yaml(root, class_names)
    return manifest
