"""Retrain triggers against a real S3 server; the retrain itself is a recorder (pure logic)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import TrainerConfigError
from cloud_trainer.retrain import RunReport
from cloud_trainer.store import ObjectStore
from cloud_trainer.triggers import RetrainTriggers
from shared.messages import utc_now
from testing.synthetic_examples import upload_examples


def make(store: ObjectStore, fleet: str, calls: list[str], **schedule: object) -> RetrainTriggers:
    config = TrainerConfig(model_line={"fleet": fleet}, schedule=schedule)  # type: ignore[arg-type]

    def retrain() -> RunReport:
        calls.append("run")
        return RunReport(
            run_id=f"r{len(calls)}", model_name="m", status="published", started_at=utc_now()
        )

    return RetrainTriggers(config, store, retrain)


def test_threshold_counts_only_examples_newer_than_the_last_run(
    store: ObjectStore, fleet_name: str, tmp_path: Path
) -> None:
    calls: list[str] = []
    triggers = make(store, fleet_name, calls, min_new_examples=5)
    upload_examples(store, fleet=fleet_name, count=4)
    assert triggers.check_threshold() is None and calls == []
    upload_examples(store, fleet=fleet_name, count=2, start=4)
    assert triggers.check_threshold() is not None and calls == ["run"]
    # The watermark is in the bucket: a restarted server does not fire again on old examples.
    restarted = make(store, fleet_name, calls, min_new_examples=5)
    assert restarted.new_examples() == 0
    assert restarted.check_threshold() is None and calls == ["run"]
    assert restarted.load_state().last_run_id == "r1"


def test_only_one_run_at_a_time(store: ObjectStore, fleet_name: str) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []
    triggers = make(store, fleet_name, calls, cron="0 3 * * *")

    def slow() -> RunReport:
        started.set()
        release.wait(10)
        calls.append("slow")
        return RunReport(run_id="slow", model_name="m", started_at=utc_now())

    triggers._retrain = slow
    thread = threading.Thread(target=triggers.fire, args=("cron",))
    thread.start()
    assert started.wait(10)
    assert triggers.fire("threshold") is None  # skipped while the first one runs
    release.set()
    thread.join()
    assert calls == ["slow"]


def test_scheduler_jobs_and_config_errors(store: ObjectStore, fleet_name: str) -> None:
    scheduler = make(store, fleet_name, [], cron="0 3 * * *", min_new_examples=10).scheduler()
    assert sorted(job.id for job in scheduler.get_jobs()) == ["cron", "threshold"]
    with pytest.raises(TrainerConfigError, match=r"schedule\.cron"):
        make(store, fleet_name, [], cron="61 * * * *").scheduler()
    with pytest.raises(TrainerConfigError, match="nothing to schedule"):
        make(store, fleet_name, []).scheduler()


def test_drift_reported_by_enough_devices_with_new_examples_triggers(
    store: ObjectStore, fleet_name: str
) -> None:
    calls: list[str] = []
    drifting: list[str] = ["dev-1"]
    triggers = make(store, fleet_name, calls, drift_devices=2, drift_min_new_examples=3)
    triggers._drifting_devices = lambda: list(drifting)
    upload_examples(store, fleet=fleet_name, count=3)
    assert triggers.check_drift() is None, "one device drifting, two wanted"
    drifting.append("dev-2")
    report = triggers.check_drift()
    assert report is not None and calls == ["run"]
    # The same drift again, without new examples since that run: nothing to learn from.
    assert triggers.check_drift() is None and calls == ["run"]
    upload_examples(store, fleet=fleet_name, count=3, start=3)
    assert triggers.check_drift() is not None and calls == ["run", "run"]


def test_the_drift_trigger_needs_the_fleet(store: ObjectStore, fleet_name: str) -> None:
    with pytest.raises(TrainerConfigError, match="enable mqtt"):
        make(store, fleet_name, [], drift_devices=1).scheduler()
    triggers = make(store, fleet_name, [], drift_devices=1)
    triggers._drifting_devices = list
    assert [job.id for job in triggers.scheduler().get_jobs()] == ["drift"]


def test_an_example_in_the_watermarks_own_second_still_counts(
    store: ObjectStore, fleet_name: str
) -> None:
    """The store stamps Last-Modified to the second: an example uploaded after a run started
    but within the second of the newest one it saw has the watermark's time, and is new."""
    calls: list[str] = []
    triggers = make(store, fleet_name, calls, min_new_examples=1)
    first = upload_examples(store, fleet=fleet_name, count=2)
    assert triggers.check_threshold() is not None
    state = triggers.load_state()
    assert state.watermark is not None and set(state.at_watermark) <= {u.keys.image for u in first}
    assert state.at_watermark, "the keys of the watermark's second are kept"
    seen = set(state.at_watermark)
    mark = state.watermark
    assert not triggers._is_new(state.at_watermark[0], mark, mark, seen)
    assert triggers._is_new("hard-examples/x/later.jpg", mark, mark, seen)
    assert not triggers._is_new("old.jpg", mark - timedelta(seconds=1), mark, seen)


def test_new_labels_trigger_waits_for_people(store: ObjectStore, fleet_name: str) -> None:
    """Uploads alone do not fire ``min_new_labels``; labels (pulled or imported) do, and
    labels a run already saw do not fire again."""
    calls: list[str] = []
    triggers = make(store, fleet_name, calls, min_new_labels=2)
    uploaded = upload_examples(store, fleet=fleet_name, count=4)
    assert triggers.check_labels() is None and calls == []

    def label(index: int) -> None:
        key = uploaded[index].keys.image.replace("hard-examples/", "labels/", 1)
        store.put(key.removesuffix(".jpg") + ".txt", b"0 0.5 0.5 0.1 0.1\n")

    label(0)
    assert triggers.new_labels() == 1 and triggers.check_labels() is None
    label(1)
    assert triggers.check_labels() is not None and calls == ["run"]
    assert triggers.new_labels() == 0 and triggers.check_labels() is None
    label(2)
    label(3)
    assert triggers.check_labels() is not None and calls == ["run", "run"]
    jobs = make(store, fleet_name, [], min_new_labels=5).scheduler().get_jobs()
    assert [job.id for job in jobs] == ["labels"]
