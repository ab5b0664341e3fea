"""The record of what people decided on each pushed example, in the control plane's database.

One row per hard example holds its latest outcome (labeled, skipped, rejected and why) and
the annotation it came from, so a second pull skips what did not change and an edited
annotation replaces its earlier row: nothing is counted twice. Per-class corrections of the
model's pre-labels sit beside it; summed per model version they are the label-quality
signal: the fleet's real error rate by class, as people saw it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, insert, select

from cloud_trainer.fleet.db import label_corrections, label_reviews
from cloud_trainer.labelstudio.tasks import ClassCorrections, Corrections

OUTCOMES = ("labeled", "skipped", "rejected")
COUNT_FIELDS = tuple(ClassCorrections.__dataclass_fields__)


@dataclass(frozen=True)
class Review:
    example_key: str
    fleet: str
    project_id: int
    task_id: int
    annotation_id: int | None
    annotation_stamp: str | None
    outcome: str
    reason: str
    model_name: str | None
    model_version: int | None
    pulled_at: datetime


@dataclass(frozen=True)
class ClassQuality:
    """Corrections of one class's pre-labels by one model version, summed over examples."""

    model_name: str | None
    model_version: int | None
    class_name: str
    examples: int
    counts: ClassCorrections

    @property
    def missed_rate(self) -> float | None:
        """Share of the boxes people drew that the model did not propose (added)."""
        labeled = self.counts.labeled
        return self.counts.added / labeled if labeled else None

    @property
    def false_rate(self) -> float | None:
        """Share of the model's boxes people removed."""
        prelabeled = self.counts.prelabeled
        return self.counts.removed / prelabeled if prelabeled else None

    @property
    def changed_rate(self) -> float | None:
        """Share of the model's boxes people moved, relabeled or removed."""
        c = self.counts
        return (c.moved + c.relabeled + c.removed) / c.prelabeled if c.prelabeled else None

    def as_dict(self) -> dict[str, object]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "class_name": self.class_name,
            "examples": self.examples,
            **asdict(self.counts),
            "missed_rate": self.missed_rate,
            "false_rate": self.false_rate,
            "changed_rate": self.changed_rate,
        }


class ReviewLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def known(self, keys: list[str]) -> dict[str, tuple[int | None, str | None, str]]:
        """``example_key -> (annotation id, annotation stamp, outcome)`` for ``keys``."""
        if not keys:
            return {}
        query = select(
            label_reviews.c.example_key,
            label_reviews.c.annotation_id,
            label_reviews.c.annotation_stamp,
            label_reviews.c.outcome,
        ).where(label_reviews.c.example_key.in_(keys))
        with self.engine.connect() as connection:
            return {row[0]: (row[1], row[2], row[3]) for row in connection.execute(query)}

    def record(self, review: Review, fixes: Corrections | None) -> None:
        """Replace the example's row and its corrections in one transaction."""
        key = review.example_key
        with self.engine.begin() as connection:
            connection.execute(
                delete(label_corrections).where(label_corrections.c.example_key == key)
            )
            connection.execute(delete(label_reviews).where(label_reviews.c.example_key == key))
            connection.execute(insert(label_reviews).values(**asdict(review)))
            if fixes is not None and fixes.by_class:
                connection.execute(
                    insert(label_corrections),
                    [
                        {"example_key": key, "class_name": name, **asdict(counts)}
                        for name, counts in sorted(fixes.by_class.items())
                    ],
                )

    def outcomes(self, fleet: str) -> dict[str, int]:
        query = (
            select(label_reviews.c.outcome, func.count())
            .where(label_reviews.c.fleet == fleet)
            .group_by(label_reviews.c.outcome)
        )
        with self.engine.connect() as connection:
            found = {str(row[0]): int(row[1]) for row in connection.execute(query)}
        return {outcome: found.get(outcome, 0) for outcome in OUTCOMES}

    def problems(self, fleet: str, limit: int = 50) -> list[dict[str, object]]:
        """The latest skipped and rejected examples with their reasons."""
        query = (
            select(
                label_reviews.c.example_key,
                label_reviews.c.task_id,
                label_reviews.c.outcome,
                label_reviews.c.reason,
                label_reviews.c.pulled_at,
            )
            .where(label_reviews.c.fleet == fleet, label_reviews.c.outcome != "labeled")
            .order_by(label_reviews.c.pulled_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [
                {
                    "example_key": row[0],
                    "task_id": row[1],
                    "outcome": row[2],
                    "reason": row[3],
                    "pulled_at": row[4].isoformat(),
                }
                for row in connection.execute(query)
            ]

    def quality(
        self, fleet: str, *, model_name: str | None = None, model_version: int | None = None
    ) -> list[ClassQuality]:
        """Corrections per model version and class, over labeled examples."""
        sums = [func.sum(label_corrections.c[name]) for name in COUNT_FIELDS]
        query = (
            select(
                label_reviews.c.model_name,
                label_reviews.c.model_version,
                label_corrections.c.class_name,
                func.count(),
                *sums,
            )
            .join(label_corrections, label_corrections.c.example_key == label_reviews.c.example_key)
            .where(label_reviews.c.fleet == fleet, label_reviews.c.outcome == "labeled")
            .group_by(
                label_reviews.c.model_name,
                label_reviews.c.model_version,
                label_corrections.c.class_name,
            )
            .order_by(
                label_reviews.c.model_name,
                label_reviews.c.model_version.desc(),
                label_corrections.c.class_name,
            )
        )
        if model_name is not None:
            query = query.where(label_reviews.c.model_name == model_name)
        if model_version is not None:
            query = query.where(label_reviews.c.model_version == model_version)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            ClassQuality(
                model_name=row[0],
                model_version=row[1],
                class_name=row[2],
                examples=int(row[3]),
                counts=ClassCorrections(
                    **{n: int(v or 0) for n, v in zip(COUNT_FIELDS, row[4:], strict=True)}
                ),
            )
            for row in rows
        ]
