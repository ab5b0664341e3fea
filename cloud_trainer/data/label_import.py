"""Import YOLO label files exported by labeling tools (CVAT, Label Studio, Roboflow all write
``{image stem}.txt``) into ``labels/{fleet}/{device}/{yyyy}/{mm}/{dd}/{frame_id}.txt``.

Files are matched to hard examples by frame id (the image stem the agent uploaded); files
that match nothing or do not parse are reported, never uploaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud_trainer.store import ObjectStore
from shared.detections import Detections
from shared.errors import ContractError
from shared.object_keys import HARD_EXAMPLES, label_key, parse_hard_example_key

MAX_LABEL_FILE_BYTES = 256 * 1024


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"imported {len(self.imported)} label file(s)"]
        if self.unmatched:
            lines.append(
                f"{len(self.unmatched)} file(s) match no hard example: "
                + ", ".join(self.unmatched[:10])
            )
        for name, why in list(self.invalid.items())[:20]:
            lines.append(f"invalid {name}: {why}")
        return "\n".join(lines)


def import_yolo_labels(
    store: ObjectStore, source: Path, *, fleet: str, classes: Sequence[str]
) -> ImportResult:
    frames: dict[str, tuple[str, str]] = {}  # frame id -> (device, day)
    for info in store.list(f"{HARD_EXAMPLES}/{fleet}/"):
        if not info.key.endswith(".jpg"):
            continue
        try:
            parsed = parse_hard_example_key(info.key)
        except ContractError:
            continue
        frames[parsed.frame_id] = (parsed.device, parsed.day)
    result = ImportResult()
    for path in sorted(source.rglob("*.txt")):
        if path.name == "classes.txt":
            continue
        target = frames.get(path.stem)
        if target is None:
            result.unmatched.append(path.name)
            continue
        try:
            if path.stat().st_size > MAX_LABEL_FILE_BYTES:
                raise ContractError(f"over {MAX_LABEL_FILE_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
            # Normalised coordinates are checked against a unit image; class ids against the line.
            Detections.from_yolo_lines(text.splitlines(), 1, 1, num_classes=len(classes))
        except (OSError, UnicodeDecodeError, ContractError) as exc:
            result.invalid[path.name] = str(exc)
            continue
        device, day = target
        store.put(
            label_key(fleet, device, day, path.stem), text.encode(), content_type="text/plain"
        )
        result.imported.append(path.name)
    return result
