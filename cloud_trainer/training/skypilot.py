"""The ``skypilot`` training backend: the run's spec goes to the bucket, a SkyPilot managed job
on a spot (or on-demand) GPU runs ``cloud-trainer train-run --run-id ...``, and this side waits
for ``runs/{run_id}/result.json``.

Spot recovery is SkyPilot's job recovery plus our per-epoch checkpoints in the bucket: a
preempted VM is replaced and ``train-run`` resumes from ``runs/{run_id}/checkpoints/last.pt``.
The price cap is enforced twice: accelerators whose budgeted hourly price exceeds the cap are
never offered to SkyPilot, and ``training.max_cost_usd`` stops training on the VM itself.
Launching needs a cloud account; generating and validating the task does not.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from typing import Any

import yaml

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import TrainerConfigError, TrainingError
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.finetune import LocalTrainer, TrainResult, TrainSpec

SECRET_ENV = "LINEFLEET_TRAINER_STORAGE__SECRET_ACCESS_KEY"  # noqa: S105 - a variable name
# Remote work dir: fixed, so a resumed run finds the same paths ultralytics saved in last.pt.
REMOTE_WORK_DIR = "~/linefleet-work"


def render_task(config: TrainerConfig, spec: TrainSpec) -> dict[str, Any]:
    """The SkyPilot task (as its YAML mapping) for one training run."""
    sky = config.skypilot
    cap = sky.max_price_per_hour_usd
    allowed = [a for a in sky.accelerators if a.price_per_hour_usd <= cap]
    if not allowed:
        cheapest = min(a.price_per_hour_usd for a in sky.accelerators)
        raise TrainerConfigError(
            f"no accelerator fits skypilot.max_price_per_hour_usd={cap} (cheapest budgeted: "
            f"${cheapest}/h): raise the cap or add a cheaper accelerator"
        )
    candidates: list[dict[str, Any]] = []
    for option in allowed:
        candidate: dict[str, Any] = {"accelerators": option.name}
        if sky.cloud:
            candidate["infra"] = sky.cloud + (f"/{sky.region}" if sky.region else "")
        candidates.append(candidate)
    storage = config.storage
    envs: dict[str, str] = {
        "LINEFLEET_TRAINER_STORAGE__BUCKET": storage.bucket,
        "LINEFLEET_TRAINER_STORAGE__REGION": storage.region,
        "LINEFLEET_TRAINER_WORK_DIR": REMOTE_WORK_DIR,
        "LINEFLEET_RUN_ID": spec.run_id,
    }
    if storage.endpoint_url:
        envs["LINEFLEET_TRAINER_STORAGE__ENDPOINT_URL"] = storage.endpoint_url
    secrets: dict[str, str | None] = {}
    if storage.access_key_id:
        envs["LINEFLEET_TRAINER_STORAGE__ACCESS_KEY_ID"] = storage.access_key_id
        # Passed at launch from the caller's environment; SkyPilot redacts secrets in logs.
        secrets[SECRET_ENV] = None
    return {
        "name": f"linefleet-{spec.run_id}"[:63],
        "resources": {
            "any_of": candidates,
            "use_spot": sky.use_spot,
            "disk_size": sky.disk_size_gb,
            "autostop": {"idle_minutes": sky.autostop_idle_minutes, "down": True},
            "job_recovery": {
                "strategy": "EAGER_NEXT_REGION",
                "max_restarts_on_errors": sky.max_restarts_on_errors,
            },
        },
        "envs": envs,
        "secrets": secrets,
        "setup": sky.setup,
        "run": f"cloud-trainer train-run --run-id {shlex.quote(spec.run_id)}",
    }


def task_yaml(task: dict[str, Any]) -> str:
    return yaml.safe_dump(task, sort_keys=False)


def load_task(task: dict[str, Any], secret_values: dict[str, str] | None = None) -> Any:
    """Parse the task with SkyPilot's own loader (schema-checked); raises on any mistake."""
    import sky  # noqa: PLC0415 - optional dependency, only for this backend

    filled = dict(task)
    if task.get("secrets"):
        values = secret_values or {}
        filled["secrets"] = {k: values.get(k, "") for k in task["secrets"]}
    try:
        return sky.Task.from_yaml_config(filled)
    except Exception as exc:
        raise TrainerConfigError(f"SkyPilot rejected the generated task: {exc}") from exc


class SkyPilotBackend:
    def __init__(self, config: TrainerConfig, store: ObjectStore) -> None:
        self.config = config
        self.store = store

    def train(self, spec: TrainSpec, *, announce: Callable[[str], None]) -> TrainResult:
        task_config = render_task(self.config, spec)
        secret = self.config.storage.secret_access_key
        values = {
            SECRET_ENV: secret.get_secret_value() if secret else os.environ.get(SECRET_ENV, "")
        }
        task = load_task(task_config, values)
        try:
            import sky  # noqa: PLC0415

            request = sky.jobs.launch(task, name=task_config["name"])
            sky.stream_and_get(request)
        except Exception as exc:
            raise TrainingError(
                f"SkyPilot launch failed ({type(exc).__name__}: {str(exc)[:300]}); check "
                "`sky check` for cloud credentials"
            ) from exc
        announce(f"  SkyPilot job {task_config['name']} launched; waiting for its result")
        return self._wait(spec)

    def _wait(self, spec: TrainSpec) -> TrainResult:
        watcher = LocalTrainer(self.store, self.config.work_dir)
        deadline = time.monotonic() + self.config.skypilot.timeout_s
        while time.monotonic() < deadline:
            result = watcher.finished(spec.run_id)
            if result is not None:
                return result
            time.sleep(self.config.skypilot.poll_interval_s)
        raise TrainingError(
            f"run {spec.run_id} did not finish within {self.config.skypilot.timeout_s:.0f} s; "
            "it keeps its checkpoints: `cloud-trainer train-run --run-id` resumes it"
        )
