"""The review ledger on SQLite and a real PostgreSQL, and what the retrain report takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_trainer.config import TrainerConfig
from cloud_trainer.fleet.db import open_database
from cloud_trainer.labelstudio.reviews import Known, Review, ReviewLedger
from cloud_trainer.labelstudio.tasks import ClassCorrections, Corrections
from cloud_trainer.retrain import Retrainer
from cloud_trainer.store import ObjectStore


def review(key: str, *, version: int = 2, outcome: str = "labeled", stamp: str = "t1") -> Review:
    return Review(
        example_key=f"hard-examples/f/d/2026/12/01/{key}.jpg",
        fleet="f",
        project_id=1,
        task_id=7,
        annotation_id=3,
        annotation_stamp=stamp,
        outcome=outcome,
        reason="" if outcome == "labeled" else "why",
        model_name="m",
        model_version=version,
        pulled_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def fixes(**counts: int) -> Corrections:
    out = Corrections()
    out.by_class["bolt"] = ClassCorrections(**counts)
    return out


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_re_pulled_example_replaces_its_row_and_rates_add_up(database_url: str) -> None:
    ledger = ReviewLedger(open_database(database_url))
    ledger.record(review("a"), fixes(prelabeled=4, labeled=4, kept=2, moved=1, removed=1, added=1))
    ledger.record(review("b"), fixes(prelabeled=1, labeled=0, removed=1))
    ledger.record(review("c", version=3), fixes(prelabeled=2, labeled=2, kept=2))
    ledger.record(review("d", outcome="rejected"), None)
    # "a" edited after a pull: its corrections are replaced, never counted twice.
    ledger.record(review("a", stamp="t2"), fixes(prelabeled=4, labeled=4, kept=4))
    assert ledger.known([review("a").example_key]) == {
        review("a").example_key: Known(
            project_id=1, task_id=7, annotation_id=3, annotation_stamp="t2"
        )
    }
    (v3,), (v2,) = (ledger.quality("f", model_version=v) for v in (3, 2))
    assert (v2.examples, v2.prelabeled, v2.kept, v2.removed) == (2, 5, 4, 1)
    assert v2.false_rate == 0.2 and v2.missed_rate == 0.0 and v2.changed_rate == 0.2
    assert v3.changed_rate == 0.0
    assert ledger.outcomes("f") == {"labeled": 3, "skipped": 0, "rejected": 1}
    assert ledger.outcomes("other") == {"labeled": 0, "skipped": 0, "rejected": 0}
    assert [p["outcome"] for p in ledger.problems("f")] == ["rejected"]


def test_the_retrain_report_takes_the_production_versions_corrections(
    tmp_path: Path, store: ObjectStore
) -> None:
    config = TrainerConfig(model_line={"fleet": "f", "name": "m"}, work_dir=tmp_path)
    ledger = ReviewLedger(open_database(config.fleet.url(tmp_path)))
    ledger.record(review("a", version=2), fixes(prelabeled=3, labeled=4, kept=3, added=1))
    ledger.record(review("b", version=1), fixes(prelabeled=1, labeled=1, kept=1))
    quality = Retrainer(config, store)._label_quality(2)
    assert [(q.model_version, q.class_name, q.added) for q in quality] == [(2, "bolt", 1)]
    assert quality[0].missed_rate == 0.25
    broken = config.model_copy(
        update={"fleet": config.fleet.model_copy(update={"database_url": "nosuch://x"})}
    )
    notes: list[str] = []
    assert Retrainer(broken, store, announce=notes.append)._label_quality(2) == []
    assert "label quality unavailable" in notes[0]
