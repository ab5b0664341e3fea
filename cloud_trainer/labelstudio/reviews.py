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

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, delete, func, insert, select

from cloud_trainer.fleet.db import label_corrections, label_reviews
from cloud_trainer.labelstudio.tasks import ClassCorrections, Corrections

OUTCOMES = ("labeled", "skipped", "rejected")
COUNT_FIELDS = tuple(ClassCorrections.__dataclass_fields__)


@dataclass(frozen=True)
class Known:
    """An example's ledger row, as much as a pull needs: which project and task, and which
    annotation (its id and last edit) its label came from."""

    project_id: int
    task_id: int
    annotation_id: int | None
    annotation_stamp: str | None


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


class ClassQuality(BaseModel):
    """Corrections of one class's pre-labels by one model version, summed over examples:
    the counts of :class:`ClassCorrections` and three rates made of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str | None
    model_version: int | None
    class_name: str
    examples: int
    prelabeled: int
    labeled: int
    kept: int
    moved: int
    relabeled: int
    added: int
    removed: int
    # Share of the boxes people drew that the model did not propose (added / labeled).
    missed_rate: float | None
    # Share of the model's boxes people removed (removed / prelabeled).
    false_rate: float | None
    # Share of the model's boxes people moved, relabeled or removed.
    changed_rate: float | None

    @classmethod
    def of(
        cls,
        model_name: str | None,
        model_version: int | None,
        class_name: str,
        examples: int,
        c: ClassCorrections,
    ) -> ClassQuality:
        def rate(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return cls(
            model_name=model_name,
            model_version=model_version,
            class_name=class_name,
            examples=examples,
            **asdict(c),
            missed_rate=rate(c.added, c.labeled),
            false_rate=rate(c.removed, c.prelabeled),
            changed_rate=rate(c.moved + c.relabeled + c.removed, c.prelabeled),
        )


class ReviewLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def known(self, keys: list[str]) -> dict[str, Known]:
        """What the ledger holds for each of ``keys`` that it has."""
        if not keys:
            return {}
        query = select(
            label_reviews.c.example_key,
            label_reviews.c.project_id,
            label_reviews.c.task_id,
            label_reviews.c.annotation_id,
            label_reviews.c.annotation_stamp,
        ).where(label_reviews.c.example_key.in_(keys))
        with self.engine.connect() as connection:
            return {row[0]: Known(*row[1:]) for row in connection.execute(query)}

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
            ClassQuality.of(
                row[0],
                row[1],
                row[2],
                int(row[3]),
                ClassCorrections(
                    **{n: int(v or 0) for n, v in zip(COUNT_FIELDS, row[4:], strict=True)}
                ),
            )
            for row in rows
        ]
