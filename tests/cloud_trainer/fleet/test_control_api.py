"""The control-plane HTTP API over real HTTP, and its dashboard in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from cloud_trainer.config import GateSection
from cloud_trainer.fleet.db import rollouts
from cloud_trainer.fleet.service import ControlPlane
from cloud_trainer.labelstudio.reviews import Review, ReviewLedger
from cloud_trainer.labelstudio.tasks import ClassCorrections, Corrections
from cloud_trainer.release.gate import judge
from cloud_trainer.release.model_registry import ModelRegistry
from cloud_trainer.release.variants import VariantVerdict
from cloud_trainer.retrain import RunReport, RunStatus
from cloud_trainer.store import ObjectStore
from edge_agent.agent import Agent
from edge_agent.config import load_config
from shared.manifest import EvalMetrics
from shared.object_keys import RUNS
from shared.topics import Topics
from testing.fleet_simulator import DeviceBehaviour, SimulatedDevice, SimulatedFleet
from testing.local_services import MosquittoProcess
from testing.synthetic_examples import upload_examples
from tests.browser import ARTIFACTS, HeadlessPage
from tests.cloud_trainer.fleet.test_rollout import (  # noqa: F401 - fixtures
    plane_factory,
    registry,
    sim_fleet,
)
from tests.edge_agent.test_agent_mqtt import write_config
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
TOKEN = "dashboard-test-token"


@pytest.fixture
def served(
    plane_factory: Callable[..., ControlPlane],  # noqa: F811
    registry: ModelRegistry,  # noqa: F811
    store: ObjectStore,
) -> Iterator[tuple[ControlPlane, str]]:
    plane = plane_factory()
    api_config = plane.config.fleet.api.model_copy(update={"port": 0, "token": SecretStr(TOKEN)})
    fleet_config = plane.config.fleet.model_copy(update={"api": api_config})
    plane.config = plane.config.model_copy(update={"fleet": fleet_config})
    server = plane.serve_api(registry, store)
    stop = threading.Event()
    loop = threading.Thread(target=plane.run, args=(stop,), daemon=True)
    loop.start()
    yield plane, f"http://127.0.0.1:{server.port}"
    stop.set()
    loop.join(5)
    server.stop()


def test_api_needs_the_token_and_refuses_bad_requests(served: tuple[ControlPlane, str]) -> None:
    _, base = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/api/devices").status_code == 401
    assert (
        httpx.get(f"{base}/api/devices", headers={"Authorization": "Bearer x"}).status_code == 401
    )
    assert httpx.get(f"{base}/api/devices", headers=auth).json() == []
    empty = httpx.get(f"{base}/api/label-quality", headers=auth).json()
    assert empty == {
        "outcomes": {"labeled": 0, "skipped": 0, "rejected": 0},
        "classes": [],
        "problems": [],
    }
    assert httpx.get(f"{base}/api/label-quality").status_code == 401
    missing = httpx.get(f"{base}/api/devices/nobody", headers=auth)
    assert missing.status_code == 404 and "nobody" in missing.text
    assert httpx.get(f"{base}/api/devices/nobody").status_code == 401
    bad_hours = httpx.get(f"{base}/api/devices/x", params={"hours": -1}, headers=auth)
    assert bad_hours.status_code == 422
    too_many = httpx.get(f"{base}/api/label-quality", params={"problems": 9999}, headers=auth)
    assert too_many.status_code == 422
    assert [m["version"] for m in httpx.get(f"{base}/api/models", headers=auth).json()] == [1, 2]
    bad = httpx.post(f"{base}/api/rollouts", headers=auth, json={"version": 0})
    assert bad.status_code == 422
    unknown = httpx.post(
        f"{base}/api/rollouts", headers=auth, json={"version": 9, "targets": {"devices": ["d"]}}
    )
    assert unknown.status_code == 400 and "no published version 9" in unknown.text
    assert httpx.get(f"{base}/api/rollouts/nope", headers=auth).status_code == 404
    for key in (
        "../etc/passwd",
        "hard-examples/other/dev/2026/01/01/x.jpg",
        "models/x/1/model.onnx",
    ):
        response = httpx.get(f"{base}/api/hard-examples/image", params={"key": key}, headers=auth)
        assert response.status_code == 400, key
    openapi = httpx.get(f"{base}/openapi.json").json()
    assert "/api/rollouts" in openapi["paths"]
    # Every JSON route documents its answer, and the request body is the CLI's own model.
    schemas = openapi["components"]["schemas"]
    for name in ("DeviceRow", "IndexEntry", "RolloutStatus", "RolloutRequest", "HardExampleView"):
        assert name in schemas, name
    assert schemas["RolloutStatus"]["properties"]["state"]["$ref"].endswith("/RolloutState")
    wrong_action = httpx.post(f"{base}/api/rollouts/r1/launch", headers=auth)
    assert wrong_action.status_code == 404 and "pause" in wrong_action.text


def test_sidecars_are_served_validated_for_this_fleets_images_only(
    served: tuple[ControlPlane, str], store: ObjectStore, fleet_name: str
) -> None:
    """The page draws the model's boxes from the sidecar a device uploaded: it comes back
    validated (without the synthetic truth), and a malformed one is reported as such."""
    _, base = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (good, bad) = upload_examples(store, fleet=fleet_name, count=2, reasons=("flicker",))
    url = f"{base}/api/hard-examples/sidecar"
    answer = httpx.get(url, params={"key": good.keys.image}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["reasons"] == ["flicker"] and answer.json()["synthetic_truth"] is None
    store.put(bad.keys.sidecar, b'{"fleet": "x", "predictions": "<script>"}')
    malformed = httpx.get(url, params={"key": bad.keys.image}, headers=auth)
    assert malformed.status_code == 502 and "malformed" in malformed.text
    store.put(bad.keys.sidecar, b" " * (2 * 1024 * 1024))  # refused before it is read
    huge = httpx.get(url, params={"key": bad.keys.image}, headers=auth)
    assert huge.status_code == 502 and "byte limit" in huge.text
    assert httpx.get(url, params={"key": good.keys.image}).status_code == 401
    foreign = good.keys.image.replace(f"/{fleet_name}/", "/other-fleet/")
    assert httpx.get(url, params={"key": foreign}, headers=auth).status_code == 400
    missing = good.keys.image.replace(".jpg", "-gone.jpg")
    assert httpx.get(url, params={"key": missing}, headers=auth).status_code == 404


def dump_dom(url: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/install-system-deps.sh"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_dashboard_shows_devices_examples_and_a_rollout_advancing(
    served: tuple[ControlPlane, str],
    mosquitto: MosquittoProcess,
    store: ObjectStore,
    fleet_name: str,
) -> None:
    plane, base = served
    page = f"{base}/#token={TOKEN}"
    assert "linefleet control plane" in dump_dom(page)
    fleet: SimulatedFleet = sim_fleet(mosquitto, fleet_name, 3)
    try:
        upload_examples(store, fleet=fleet_name, count=2)
        wait_for(lambda: len(plane.registry.devices()) == 3, timeout=10)
        dom = dump_dom(page)
        for device in ("dev-000", "dev-001", "dev-002"):
            assert device in dom
        # Each device's camera from its heartbeat: state, fps in/out, frame age.
        wait_for(lambda: all(d.cameras for d in plane.registry.devices()), timeout=10)
        dom = dump_dom(page)
        assert dom.count('data-camera="cam0" data-state="streaming"') == 3
        assert "cam0 streaming 25/" in dom and "age 12 ms" in dom
        assert dom.count("CPUExecutionProvider p50 8.0 ms p99 15.0 ms") == 3
        assert dom.count(" s ago</td>") == 3  # last seen, from the heartbeats
        # Thumbnails of the uploaded hard examples (drawn once image and sidecar are in: on a
        # loaded machine that can take longer than one dump's virtual-time budget).
        assert wait_for(lambda: dump_dom(page).count('class="example"') == 2, timeout=60)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {
            "version": 2,
            "rollout_id": "dash-1",
            "params": {"waves": [0.3, 1.0], "soak_s": 4.0},
        }
        assert httpx.post(f"{base}/api/rollouts", headers=auth, json=body).status_code == 201
        wait_for(lambda: plane.controller.status("dash-1").counts.get("active", 0) >= 1, timeout=15)
        during = dump_dom(page)
        assert 'data-state="running"' in during and "wave 1 (30%): 1/1 active" in during
        wait_for(lambda: plane.controller.status("dash-1").state == "succeeded", timeout=30)
        after = dump_dom(page)
        assert 'data-state="succeeded"' in after and "wave 2 (100%): 2/2 active" in after
    finally:
        fleet.stop()


def test_a_real_agent_shows_on_the_console_with_its_cameras_and_history(
    served: tuple[ControlPlane, str],
    mosquitto: MosquittoProcess,
    fleet_name: str,
    tmp_path: Path,
) -> None:
    """Not a simulated device: the edge agent itself, its camera and model, over the broker."""
    plane, base = served
    plane.registry.history_interval = timedelta(0)  # every heartbeat, for the charts
    agent = Agent(load_config(write_config(tmp_path, mosquitto, fleet_name)))
    agent.start()
    try:
        wait_for(lambda: plane.registry.device("edge-mq") is not None, timeout=15)
        for _ in range(3):
            time.sleep(0.5)  # a line window with frames in it
            agent.publish_heartbeat()
        since = datetime.now(UTC) - timedelta(minutes=5)
        wait_for(lambda: len(plane.registry.history("edge-mq", since)) >= 3, timeout=15)
        device = plane.registry.device("edge-mq")
        assert device is not None and device.online and "cam0" in device.cameras
        with HeadlessPage() as page:
            page.goto(f"{base}/#token={TOKEN}")
            row = "document.querySelector('#devices tr[data-device=edge-mq]')"
            page.wait_for(row)
            page.wait_for(
                "document.querySelector('#devices tr[data-device=edge-mq] "
                "[data-camera=cam0][data-state=streaming]')"
            )
            text = page.evaluate(f"{row}.textContent")
            assert device.provider and device.provider in text
            assert "disabled" in text  # this agent's config has OTA off, and says so
            page.evaluate(f"{row}.click()")
            page.wait_for("document.querySelector('#device-detail[data-device=edge-mq]')")
            detections = "document.querySelector('.chart[data-title^=detections]')"
            page.wait_for(f"Number({detections}.dataset.points) >= 3")
            facts = page.evaluate("document.getElementById('device-facts').textContent")
            assert "online" in facts
    finally:
        agent.stop()


def a_run_report(run_id: str) -> bytes:
    """A finished run as the retrainer stores it: stage timings, labels, the gate's verdict."""
    candidate = EvalMetrics(map50=0.7, map50_95=0.5, per_class_recall={"bolt": 0.9, "nut": 0.6})
    production = EvalMetrics(map50=0.4, map50_95=0.3, per_class_recall={"bolt": 0.5, "nut": 0.7})
    report = RunReport(
        run_id=run_id,
        model_name="m",
        status=RunStatus.REJECTED,
        reason="recall of class 'nut' fell",
        started_at=datetime(2026, 12, 1, tzinfo=UTC),
        stage_seconds={"build": 6.8, "train": 181.2},
        dataset_sources={"synthetic": 174, "replay": 48},
        gate=judge(candidate, production, GateSection()),
        cost_usd=0.004,
    )
    return report.model_dump_json().encode()


def test_the_console_filters_sorts_and_shows_runs_models_and_boxes(
    served: tuple[ControlPlane, str],
    mosquitto: MosquittoProcess,
    store: ObjectStore,
    fleet_name: str,
) -> None:
    plane, base = served
    plane.registry.history_interval = timedelta(0)  # every heartbeat, for the charts
    devices = [
        SimulatedDevice(
            f"dev-{i:03d}",
            f"line-{1 + i % 2}",
            1,
            DeviceBehaviour(ota_enabled=i != 3, drifting=i == 1),
        )
        for i in range(4)
    ]
    fleet = SimulatedFleet(
        mosquitto.host, mosquitto.port, Topics(fleet_name), devices, heartbeat_s=0.2
    )
    fleet.start()
    try:
        upload_examples(store, fleet=fleet_name, count=1, with_predictions=True)
        store.put(f"{RUNS}/run-7/report.json", a_run_report("run-7"))
        published = RunReport.model_validate_json(a_run_report("run-8")).model_copy(
            update={
                "status": RunStatus.PUBLISHED,
                "variants": [
                    VariantVerdict(
                        precision="int8",
                        published=True,
                        map50=0.698,
                        map50_delta=-0.002,
                        runtimes=["onnxruntime"],
                        reasons=["openvino: washer recall fell"],
                    ),
                    VariantVerdict(precision="fp16", published=False, reasons=["mAP50 fell"]),
                ],
            }
        )
        store.put(f"{RUNS}/run-8/report.json", published.model_dump_json().encode())
        record_label_reviews(plane, fleet_name)
        wait_for(lambda: len(plane.registry.devices()) == 4, timeout=10)
        with HeadlessPage() as page:
            page.goto(f"{base}/#token={TOKEN}")
            rows = "[...document.querySelectorAll('#devices tr')].map(r => r.dataset.device)"
            page.wait_for(f"{rows}.length === 4")
            # Filter by group: the choice is offered from what the fleet reports.
            page.evaluate(
                "(() => { const s = document.querySelector('#filters select[name=group_name]');"
                " s.value = 'line-2'; s.dispatchEvent(new Event('change')); })()"
            )
            page.wait_for(f"{rows}.length === 2")
            assert page.evaluate(rows) == ["dev-001", "dev-003"]
            assert page.evaluate("document.getElementById('shown').textContent") == ("2 of 4 shown")
            # Sort: a click on the header sorts ascending, a second one descending.
            header = "document.querySelector('#device-columns th[data-key=device_id]')"
            page.evaluate(f"{header}.click()")
            page.wait_for(f"{rows}[0] === 'dev-003'")
            # A device whose agent has OTA off says so (from its heartbeat).
            off = "document.querySelector('#devices tr[data-device=dev-003]').textContent"
            page.wait_for(f"{off}.includes('disabled')")
            # A camera whose line drifts under the model (the agent's drift sampler).
            page.wait_for("document.querySelector('.camera[data-drifting=true]')")
            drifting = "document.querySelector('.camera[data-drifting=true]').textContent"
            assert "line drifting" in page.evaluate(drifting)
            assert (
                page.evaluate("document.querySelectorAll('.camera[data-drifting=true]').length")
                == 1
            )
            # Runs: labels used (not the replayed data), stage timings, the gate per class.
            page.wait_for("document.querySelector('#runs tr[data-status=rejected]')")
            run = page.evaluate(
                "document.querySelector('#runs tr[data-status=rejected]').textContent"
            )
            assert "run-7" in run and "174" in run and "train 181.2" in run
            assert "bolt 0.90 (+0.40)" in run and "nut 0.60 (-0.10)" in run
            # A published run's variants: what each costs against fp32, and where it runs.
            variants = page.evaluate(
                "document.querySelector('#runs tr[data-status=published]').textContent"
            )
            assert "int8 -0.002 (onnxruntime)" in variants and "fp16 left out" in variants
            assert page.evaluate("document.querySelectorAll('#models tr').length") == 2
            # The hard example with the model's boxes drawn, and who mined it.
            page.wait_for("document.querySelector('figure.example')")
            boxes = int(page.evaluate("document.querySelector('figure.example').dataset.boxes"))
            assert boxes >= 1
            caption = page.evaluate("document.querySelector('figure.example').textContent")
            assert "confidence_band" in caption and "dev-1/cam0" in caption
            # People's corrections of the model (from Label Studio), per class.
            page.wait_for("document.querySelector('#label-quality tr[data-class=bolt]')")
            bolt = page.evaluate(
                "document.querySelector('#label-quality tr[data-class=bolt]').textContent"
            )
            assert "m v2" in bolt and "33.3%" in bolt  # 1 of 3 bolts missed
            outcomes = page.evaluate("document.getElementById('label-outcomes').textContent")
            assert "1 labeled" in outcomes and "1 rejected" in outcomes
            problems = page.evaluate("document.getElementById('label-problems').textContent")
            assert "unknown label 'screw'" in problems
            # A device's page: its history drawn, the drifting line shaded, per class.
            page.evaluate("document.querySelector('#devices tr[data-device=dev-001]').click()")
            page.wait_for("document.querySelector('#device-detail[data-device=dev-001]')")
            detections = "document.querySelector('.chart[data-title^=detections]')"
            page.wait_for(f"Number({detections}.dataset.points) >= 6")
            series = page.evaluate(
                f"[...{detections}.querySelectorAll('polyline')].map(p => p.dataset.series)"
            )
            assert series == ["bolt", "nut", "washer"]
            charts = "[...document.querySelectorAll('#device-charts .chart')]"
            assert len(page.evaluate(f"{charts}.map(c => c.dataset.title)")) == 7
            assert page.evaluate(f"{detections}.querySelectorAll('rect.drift').length") >= 1
            band = page.evaluate(
                "document.querySelector('.chart[data-title^=share] .legend').textContent"
            )
            assert "0.62" in band  # the drifting line: most frames uncertain
            facts = page.evaluate("document.getElementById('device-facts').textContent")
            assert "online" in facts and "v1" in facts
            page.screenshot(ARTIFACTS / "console-device-page.png")
            page.evaluate("document.querySelector('#devices tr[data-device=dev-003]').click()")
            page.wait_for("document.querySelector('#device-detail[data-device=dev-003]')")
            page.wait_for(f"Number({detections}.dataset.points) >= 3")
            assert page.evaluate(f"{detections}.querySelectorAll('rect.drift').length") == 0
    finally:
        fleet.stop()


def record_label_reviews(plane: ControlPlane, fleet: str) -> None:
    """What `labels pull` records: one labeled example whose bolts people corrected, and
    one rejected example."""
    ledger = ReviewLedger(plane.engine)

    def review(key: str, outcome: str, reason: str = "") -> Review:
        return Review(
            example_key=key,
            fleet=fleet,
            project_id=1,
            task_id=len(key),
            annotation_id=1,
            annotation_stamp="2026-12-01T10:00:00+00:00",
            outcome=outcome,
            reason=reason,
            model_name="m",
            model_version=2,
            pulled_at=datetime(2026, 12, 1, tzinfo=UTC),
        )

    fixes = Corrections()
    fixes.by_class["bolt"] = ClassCorrections(prelabeled=2, labeled=3, kept=2, added=1)
    ledger.record(review(f"hard-examples/{fleet}/d/2026/12/01/a.jpg", "labeled"), fixes)
    ledger.record(
        review(f"hard-examples/{fleet}/d/2026/12/01/bb.jpg", "rejected", "unknown label 'screw'"),
        None,
    )


def button(rollout: str, action: str) -> str:
    row = f'tr[data-rollout="{rollout}"]'
    return f"document.querySelector('{row} button[data-action=\"{action}\"]')"


def stored_params(plane: ControlPlane, rollout_id: str) -> dict[str, Any]:
    with plane.controller.engine.connect() as connection:
        row = connection.execute(
            select(rollouts.c.params).where(rollouts.c.rollout_id == rollout_id)
        ).one()
    params = row.params if isinstance(row.params, dict) else json.loads(row.params)
    return dict(params)


def test_an_operator_starts_and_steers_a_rollout_from_the_page(
    served: tuple[ControlPlane, str], mosquitto: MosquittoProcess, fleet_name: str
) -> None:
    """Start from the form, then pause, resume and abort with the row's buttons, as an
    operator does; a destructive action asks first and does nothing when the answer is no."""
    plane, base = served
    fleet: SimulatedFleet = sim_fleet(mosquitto, fleet_name, 3)
    try:
        wait_for(lambda: len(plane.registry.devices()) == 3, timeout=10)
        with HeadlessPage() as page:
            page.goto(f"{base}/#token={TOKEN}")
            # The published versions are offered; empty fields keep the configured values.
            page.wait_for("document.querySelectorAll('#start option').length === 2")
            page.evaluate(
                "(() => { const f = document.getElementById('start');"
                " f.version.value = '2'; f.waves.value = '0.3, 1.0'; f.soak.value = '60';"
                " window.confirm = () => true; f.requestSubmit(); })()"
            )
            page.wait_for("document.getElementById('action').textContent.startsWith('started')")
            started = page.evaluate("document.getElementById('action').textContent")
            steer = started.removeprefix("started: ")
            stored = stored_params(plane, steer)
            assert stored["waves"] == [0.3, 1.0] and stored["soak_s"] == 60
            configured = plane.config.fleet.rollout
            assert stored["max_failures"] == configured.max_failures
            assert stored["min_fps_ratio"] == configured.min_fps_ratio
            assert wait_for(
                lambda: plane.controller.status(steer).counts.get("active", 0) >= 1, timeout=15
            )
            # The rollout's devices: wave, state, and seconds before each would time out.
            page.wait_for(button(steer, "devices"))
            page.evaluate(f"{button(steer, 'devices')}.click()")
            detail = f"document.querySelectorAll('tr[data-detail=\"{steer}\"] tr.rollout-device')"
            page.wait_for(f"{detail}.length === 3")
            assert "s" in page.evaluate(f"{detail}[0].textContent")
            page.wait_for(button(steer, "pause"))
            page.evaluate(f"{button(steer, 'pause')}.click()")
            assert wait_for(lambda: plane.controller.status(steer).state == "paused", timeout=10)
            page.wait_for(button(steer, "resume"))  # the page shows what a paused one allows
            assert page.evaluate(f"{button(steer, 'pause')} === null")
            page.evaluate(f"{button(steer, 'resume')}.click()")
            assert wait_for(lambda: plane.controller.status(steer).state == "running", timeout=10)
            # Abort asks first: "no" leaves the rollout running.
            page.wait_for(button(steer, "abort"))
            asked = page.evaluate(
                "(() => { window.asked = [];"
                " window.confirm = m => { asked.push(m); return false; };"
                f" {button(steer, 'abort')}.click(); return new Promise(r =>"
                " setTimeout(() => r(window.asked), 500)); })()"
            )
            assert len(asked) == 1 and "previous version" in asked[0] and steer in asked[0]
            assert plane.controller.status(steer).state == "running"
            page.evaluate("window.confirm = () => true")
            page.evaluate(f"{button(steer, 'abort')}.click()")
            assert wait_for(lambda: plane.controller.status(steer).state == "aborted", timeout=10)
            page.wait_for(
                f'document.querySelector(\'tr[data-rollout="{steer}"][data-state="aborted"]\')'
            )
            assert f"abort: {steer}" in page.evaluate(
                "document.getElementById('action').textContent"
            )
        # The device the first wave updated goes back to version 1.
        assert wait_for(
            lambda: all(d.running_version == 1 for d in fleet.devices.values()), timeout=15
        )
    finally:
        fleet.stop()
