"""Retrain triggers for ``cloud-trainer serve``: a cron schedule, a threshold of new hard
examples (or of new labels, from people) since the last run, and drift reported by the
fleet. The watermarks live in the bucket, so a restarted server does not re-trigger on
examples or labels a previous run already saw."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import ObjectNotFoundError, TrainerConfigError
from cloud_trainer.retrain import RunReport
from cloud_trainer.store import ObjectStore
from shared.errors import LinefleetError
from shared.messages import utc_now
from shared.object_keys import HARD_EXAMPLES, LABELS, RUNS

log = logging.getLogger(__name__)


class TriggerState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    watermark: AwareDatetime | None = None
    # Keys stamped with the watermark's very second when it was taken: the store's
    # Last-Modified has one-second resolution, so an example uploaded later in that second
    # is new although its time equals the watermark.
    at_watermark: list[str] = []
    # The same for label files (labels/): people's labels pulled or imported since.
    labels_watermark: AwareDatetime | None = None
    labels_at_watermark: list[str] = []
    last_run_id: str | None = None
    last_status: str | None = None


class RetrainTriggers:
    def __init__(
        self,
        config: TrainerConfig,
        store: ObjectStore,
        retrain: Callable[[], RunReport],
        *,
        drifting_devices: Callable[[], list[str]] | None = None,
    ) -> None:
        """``drifting_devices``: the online devices whose heartbeat says a camera's line
        drifts (the control plane's fleet registry); needed by ``schedule.drift_devices``."""
        self.config = config
        self.store = store
        self._retrain = retrain
        self._drifting_devices = drifting_devices
        self._busy = threading.Lock()
        self.state_key = f"{RUNS}/triggers/{config.model_line.name}.json"

    # ------------------------------------------------------------------ state
    def load_state(self) -> TriggerState:
        try:
            body, _ = self.store.get(self.state_key, max_bytes=64 * 1024)
            return TriggerState.model_validate_json(body)
        except ObjectNotFoundError:
            return TriggerState()
        except ValidationError:
            log.warning("trigger state %s is unreadable; starting from scratch", self.state_key)
            return TriggerState()

    def _scan(
        self, prefix: str, suffix: str, mark: datetime | None, at_mark: list[str]
    ) -> tuple[datetime | None, list[str], int]:
        """(newest Last-Modified, the keys stamped with it, objects new since ``mark``)."""
        newest: datetime | None = None
        at_newest: list[str] = []
        count = 0
        seen = set(at_mark)
        for info in self.store.list(f"{prefix}/{self.config.model_line.fleet}/"):
            if not info.key.endswith(suffix):
                continue
            if newest is None or info.last_modified > newest:
                newest, at_newest = info.last_modified, [info.key]
            elif info.last_modified == newest:
                at_newest.append(info.key)
            if self._is_new(info.key, info.last_modified, mark, seen):
                count += 1
        return newest, at_newest, count

    @staticmethod
    def _is_new(key: str, modified: datetime, mark: datetime | None, seen: set[str]) -> bool:
        if mark is None or modified > mark:
            return True
        return modified == mark and key not in seen

    def new_examples(self) -> int:
        state = self.load_state()
        return self._scan(HARD_EXAMPLES, ".jpg", state.watermark, state.at_watermark)[2]

    def new_labels(self) -> int:
        state = self.load_state()
        return self._scan(LABELS, ".txt", state.labels_watermark, state.labels_at_watermark)[2]

    # ------------------------------------------------------------------ firing
    def fire(self, why: str) -> RunReport | None:
        """Run a retrain unless one is already running; advance the watermark afterwards."""
        if not self._busy.acquire(blocking=False):
            log.info("retrain trigger (%s) skipped: a run is in progress", why)
            return None
        try:
            newest, at_newest, _ = self._scan(HARD_EXAMPLES, ".jpg", None, [])
            labels_newest, labels_at_newest, _ = self._scan(LABELS, ".txt", None, [])
            log.info("retrain triggered: %s", why)
            report = self._retrain()
            state = TriggerState(
                watermark=newest,
                at_watermark=at_newest,
                labels_watermark=labels_newest,
                labels_at_watermark=labels_at_newest,
                last_run_id=report.run_id,
                last_status=report.status,
            )
            self.store.put(
                self.state_key, state.model_dump_json().encode(), content_type="application/json"
            )
            return report
        finally:
            self._busy.release()

    def check_threshold(self) -> RunReport | None:
        return self._check_new(
            self.config.schedule.min_new_examples, self.new_examples, "hard examples"
        )

    def check_labels(self) -> RunReport | None:
        return self._check_new(self.config.schedule.min_new_labels, self.new_labels, "labels")

    def _check_new(
        self, needed: int | None, count_new: Callable[[], int], what: str
    ) -> RunReport | None:
        """Fire when ``count_new()`` reached ``needed`` (None: this trigger is off)."""
        if needed is None:
            return None
        count = count_new()
        if count < needed:
            log.debug("%d new %s, threshold %d", count, what, needed)
            return None
        return self.fire(f"{count} new {what} >= threshold {needed}")

    def check_drift(self) -> RunReport | None:
        """Fire when enough devices report drift and the drift brought enough new examples:
        without new examples a retrain would learn nothing about the changed line."""
        wanted = self.config.schedule.drift_devices
        if wanted is None or self._drifting_devices is None:
            return None
        drifting = self._drifting_devices()
        if len(drifting) < wanted:
            log.debug("%d device(s) drifting, trigger at %d", len(drifting), wanted)
            return None
        needed = self.config.schedule.drift_min_new_examples
        count = self.new_examples()
        if count < needed:
            log.info(
                "%d device(s) drifting but only %d new hard example(s) (need %d): waiting",
                len(drifting),
                count,
                needed,
            )
            return None
        named = ", ".join(sorted(drifting)[:5]) + (" ..." if len(drifting) > 5 else "")
        return self.fire(f"{len(drifting)} device(s) drifting ({named}), {count} new examples")

    def _safely(self, job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except LinefleetError as exc:
                log.error("scheduled retrain failed: %s", exc)

        return run

    def scheduler(self) -> BackgroundScheduler:
        """A started-later scheduler with the configured jobs (one run at a time)."""
        schedule = self.config.schedule
        scheduler = BackgroundScheduler(timezone="UTC")
        if schedule.cron:
            try:
                trigger = CronTrigger.from_crontab(schedule.cron, timezone="UTC")
            except ValueError as exc:
                raise TrainerConfigError(f"schedule.cron {schedule.cron!r}: {exc}") from exc
            scheduler.add_job(
                self._safely(lambda: self.fire(f"cron {schedule.cron}")),
                trigger,
                id="cron",
                max_instances=1,
                coalesce=True,
            )

        def every_check(job: Callable[[], object], job_id: str, *, now: bool = True) -> None:
            scheduler.add_job(
                self._safely(job),
                "interval",
                seconds=schedule.check_interval_s,
                id=job_id,
                max_instances=1,
                coalesce=True,
                **({"next_run_time": utc_now()} if now else {}),
            )

        if schedule.min_new_examples is not None:
            every_check(self.check_threshold, "threshold")
        if schedule.min_new_labels is not None:
            every_check(self.check_labels, "labels")
        if schedule.drift_devices is not None:
            if self._drifting_devices is None:
                raise TrainerConfigError(
                    "schedule.drift_devices needs the fleet's heartbeats: enable mqtt so serve "
                    "runs the control plane"
                )
            every_check(self.check_drift, "drift", now=False)
        if not scheduler.get_jobs():
            raise TrainerConfigError(
                "serve has nothing to schedule: set schedule.cron, schedule.min_new_examples, "
                "schedule.min_new_labels and/or schedule.drift_devices"
            )
        return scheduler
