"""``cloud-trainer`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from cloud_trainer import __version__
from cloud_trainer.fleet.params import RolloutAction
from cloud_trainer.fleet.states import RolloutState
from shared.errors import LinefleetError
from shared.signing import SigningKey

if TYPE_CHECKING:
    from cloud_trainer.config import TrainerConfig
    from cloud_trainer.fleet.service import ControlPlane
    from cloud_trainer.labelstudio.reviews import ReviewLedger
    from cloud_trainer.store import ObjectStore
    from cloud_trainer.training.finetune import EpochReport


def _keygen(args: argparse.Namespace) -> int:
    """Write an Ed25519 key pair: the private key for the trainer, the public one for agents."""
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / f"{args.key_id}.key"
    public_path = out / f"{args.key_id}.pub"
    if private_path.exists() and not args.force:
        print(f"error: {private_path} exists; pass --force to replace it", file=sys.stderr)
        return 1
    key = SigningKey.generate(args.key_id)
    # Create the private key 0600 from the start: never world-readable, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_pem())
    public_path.write_bytes(key.public_pem())
    print(f"private key: {private_path} (keep it on the trainer only)")
    print(f"public key:  {public_path} (install on agents as trusted key {args.key_id!r})")
    return 0


def _synth_dataset(args: argparse.Namespace) -> int:
    from shared.synth import write_yolo_dataset  # noqa: PLC0415 - needs opencv, only here

    data = write_yolo_dataset(
        args.out_dir, train=args.train, val=args.val, seed=args.seed, drifts=args.drift
    )
    print(f"wrote {args.train} train + {args.val} val images; data file: {data}")
    return 0


def _fleet_acl(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet.acl import FleetInventory, render_acl  # noqa: PLC0415

    text = render_acl(FleetInventory.from_file(args.inventory))
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- trainer commands
EXIT_REJECTED = 3
EXIT_SKIPPED = 4


def _config(args: argparse.Namespace) -> TrainerConfig:
    from cloud_trainer.config import load_trainer_config  # noqa: PLC0415

    config = load_trainer_config(args.config)
    if getattr(args, "work_dir", None) is not None:
        config = config.model_copy(update={"work_dir": args.work_dir})
    return config


def _store(config: TrainerConfig) -> ObjectStore:
    from cloud_trainer.store import ObjectStore  # noqa: PLC0415

    return ObjectStore.from_config(config.storage)


def _progress_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_epoch(report: EpochReport) -> None:
    done = int(30 * report.epoch / max(report.epochs, 1))
    bar = "#" * done + "." * (30 - done)
    metrics = (
        f"mAP50 {report.map50:.3f} mAP50-95 {report.map50_95:.3f}"
        if report.map50 is not None and report.map50_95 is not None
        else ""
    )
    print(
        f"  epoch {report.epoch:>3}/{report.epochs} [{bar}] {report.seconds:6.1f} s  "
        f"loss {report.box_loss or 0:.3f}  {metrics}  ${report.cost_usd:.4f}",
        file=sys.stderr,
        flush=True,
    )


def _retrain(args: argparse.Namespace) -> int:
    from cloud_trainer.retrain import Retrainer, RunStatus, describe_report  # noqa: PLC0415

    config = _config(args)
    report = Retrainer(config, _store(config), announce=_progress_line, on_epoch=_print_epoch).run(
        args.run_id
    )
    print(describe_report(report))
    exits = {
        RunStatus.PUBLISHED: 0,
        RunStatus.REJECTED: EXIT_REJECTED,
        RunStatus.SKIPPED: EXIT_SKIPPED,
    }
    return exits.get(report.status, 1)


def _train_run(args: argparse.Namespace) -> int:
    from cloud_trainer.training.finetune import LocalTrainer, load_spec  # noqa: PLC0415

    config = _config(args)
    store = _store(config)
    result = LocalTrainer(store, config.work_dir, on_epoch=_print_epoch).run(
        load_spec(store, args.run_id)
    )
    print(result.model_dump_json(indent=1))
    return 0


def _skypilot_task(args: argparse.Namespace) -> int:
    from cloud_trainer.training.finetune import load_spec  # noqa: PLC0415
    from cloud_trainer.training.skypilot import load_task, render_task, task_yaml  # noqa: PLC0415

    config = _config(args)
    task = render_task(config, load_spec(_store(config), args.run_id))
    load_task(task)  # validated by SkyPilot's own loader before anyone launches it
    print(task_yaml(task), end="")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from cloud_trainer.release.model_registry import ModelRegistry, describe  # noqa: PLC0415

    config = _config(args)
    index, _ = ModelRegistry(_store(config), config.model_line.name).read_index()
    if not index.entries:
        print(f"model line {config.model_line.name!r}: no version registered")
        return 0
    print(f"model line {config.model_line.name!r}:")
    for entry in sorted(index.entries, key=lambda e: e.version):
        print("  " + describe(entry))
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from cloud_trainer.release.model_registry import ModelRegistry  # noqa: PLC0415

    config = _config(args)
    registry = ModelRegistry(_store(config), config.model_line.name)
    version = args.version or registry.latest_published().version
    print(registry.manifest(version).model_dump_json(indent=1))
    return 0


def _models_register(args: argparse.Namespace) -> int:
    from cloud_trainer.data.dataset import register_folder_dataset  # noqa: PLC0415
    from cloud_trainer.release.model_registry import ModelRegistry  # noqa: PLC0415
    from cloud_trainer.release.register import register_model  # noqa: PLC0415
    from cloud_trainer.retrain import load_signing_key  # noqa: PLC0415

    config = _config(args)
    store = _store(config)
    signer = load_signing_key(config)
    dataset_version = None
    if args.dataset_folder is not None:
        dataset_version = args.dataset_version
        register_folder_dataset(
            store,
            config.work_dir,
            name=config.model_line.name,
            version=dataset_version,
            folder=args.dataset_folder,
            class_names=list(config.model_line.classes),
            dataset=config.dataset,
        )
    manifest = register_model(
        config,
        ModelRegistry(store, config.model_line.name),
        signer,
        onnx=args.onnx,
        weights=args.weights,
        dataset_version=dataset_version,
        notes=args.notes,
    )
    print(f"registered {manifest.model_name} v{manifest.version} (signed by {manifest.key_id})")
    return 0


def _labels_import(args: argparse.Namespace) -> int:
    from cloud_trainer.data.label_import import import_yolo_labels  # noqa: PLC0415

    config = _config(args)
    result = import_yolo_labels(
        _store(config),
        args.source,
        fleet=config.model_line.fleet,
        classes=config.model_line.classes,
    )
    print(result.summary())
    return 0 if result.imported else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _label_studio(args: argparse.Namespace) -> int:
    """``labels push`` / ``labels pull`` / ``labels quality``."""
    from cloud_trainer.fleet.db import open_database  # noqa: PLC0415
    from cloud_trainer.labelstudio.client import LabelStudioClient  # noqa: PLC0415
    from cloud_trainer.labelstudio.pull import pull_labels  # noqa: PLC0415
    from cloud_trainer.labelstudio.push import push_examples  # noqa: PLC0415
    from cloud_trainer.labelstudio.reviews import ReviewLedger  # noqa: PLC0415

    config = _config(args)
    action = args.labels_command
    if action == "quality":
        ledger = ReviewLedger(open_database(config.fleet.url(config.work_dir)))
        _print_quality(ledger, config.model_line.fleet)
        return 0
    with LabelStudioClient.from_section(config.labeling.label_studio) as client:
        if action == "push":
            pushed = push_examples(_store(config), client, config, limit=args.limit)
            print(pushed.summary())
            return 0
        ledger = ReviewLedger(open_database(config.fleet.url(config.work_dir)))
        pulled = pull_labels(_store(config), client, ledger, config)
        print(pulled.summary())
        return 0


def _print_quality(ledger: ReviewLedger, fleet: str) -> None:
    outcomes = ledger.outcomes(fleet)
    print("examples: " + ", ".join(f"{n} {k}" for k, n in outcomes.items()))
    print(
        f"{'model':<24} {'class':<16} {'pre':>5} {'final':>5} {'kept':>5} {'moved':>5} "
        f"{'relab':>5} {'added':>5} {'rem':>5} {'missed':>7} {'false':>7}"
    )
    for row in ledger.quality(fleet):
        model = f"{row.model_name}@{row.model_version}" if row.model_name else "unknown"
        missed = "-" if row.missed_rate is None else f"{row.missed_rate:.1%}"
        false = "-" if row.false_rate is None else f"{row.false_rate:.1%}"
        print(
            f"{model:<24} {row.class_name:<16} {row.prelabeled:>5} {row.labeled:>5} "
            f"{row.kept:>5} {row.moved:>5} {row.relabeled:>5} {row.added:>5} "
            f"{row.removed:>5} {missed:>7} {false:>7}"
        )


def _serve(args: argparse.Namespace) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from cloud_trainer.retrain import Retrainer  # noqa: PLC0415
    from cloud_trainer.triggers import RetrainTriggers  # noqa: PLC0415

    # First of all: a SIGTERM while the control plane is still starting (connecting, taking in
    # the retained fleet state) stops it cleanly too, instead of killing it mid-way.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    config = _config(args)
    store = _store(config)
    retrainer = Retrainer(config, store, announce=_progress_line, on_epoch=_print_epoch)
    plane = _control_plane(config) if config.mqtt.enabled else None
    triggers = RetrainTriggers(
        config,
        store,
        retrainer.run,
        drifting_devices=plane.registry.drifting_devices if plane is not None else None,
    )
    schedule = config.schedule
    scheduled = (
        schedule.cron
        or schedule.min_new_examples
        or schedule.min_new_labels
        or schedule.drift_devices
    )
    try:
        scheduler = triggers.scheduler() if scheduled else None
    except LinefleetError:
        if plane is not None:
            plane.stop()
        raise
    api = None
    if plane is not None and config.fleet.api.enabled:
        from cloud_trainer.release.model_registry import ModelRegistry  # noqa: PLC0415

        api = plane.serve_api(ModelRegistry(store, config.model_line.name), store)
        print(f"dashboard: http://{config.fleet.api.host}:{api.port}/", file=sys.stderr)
    if scheduler is not None:
        scheduler.start()
        print(f"retrain triggers: {[job.id for job in scheduler.get_jobs()]}", file=sys.stderr)
    try:
        if plane is not None:
            print("rollout controller running", file=sys.stderr)
            plane.run(stop)
        else:
            stop.wait()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        if api is not None:
            api.stop()
        if plane is not None:
            plane.stop()
    return 0


# ----------------------------------------------------------------------------- rollouts
def _control_plane(config: TrainerConfig, *, connect: bool = True) -> ControlPlane:
    from cloud_trainer.fleet.service import ControlPlane  # noqa: PLC0415
    from cloud_trainer.release.model_registry import ModelRegistry  # noqa: PLC0415
    from cloud_trainer.retrain import load_signing_key  # noqa: PLC0415

    registry = ModelRegistry(_store(config), config.model_line.name)
    plane = ControlPlane(config, registry.manifest, load_signing_key(config))
    if connect:
        plane.start()
    return plane


def _print_status(plane: ControlPlane, rollout_id: str) -> str:
    status = plane.controller.status(rollout_id)
    waves = "  ".join(
        f"wave {i + 1} ({int(f * 100)}%): "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-")
        for i, (f, counts) in enumerate(zip(status.waves, status.per_wave, strict=True))
    )
    print(
        f"{status.rollout_id}: {status.model_name} v{status.version} {status.state}"
        f"{' - ' + status.reason if status.reason else ''}\n  {waves}",
        flush=True,
    )
    for warning in status.warnings:
        print(f"  warning: {warning}", flush=True)
    return status.state


def _follow(plane: ControlPlane, rollout_id: str) -> int:
    status = plane.follow(rollout_id, lambda _: _print_status(plane, rollout_id))
    return 0 if status.state is RolloutState.SUCCEEDED else 1


def _rollout_start(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet.params import (  # noqa: PLC0415
        RolloutParams,
        RolloutRequest,
        RolloutTargets,
    )

    config = _config(args)
    defaults = config.fleet.rollout
    overrides = {
        "waves": [float(w) for w in args.waves.split(",")] if args.waves else None,
        "soak_s": args.soak_s,
        "max_failures": args.max_failures,
        "max_failure_ratio": args.max_failure_ratio,
        "device_timeout_s": args.device_timeout_s,
    }
    params = RolloutParams.model_validate(
        defaults.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    )
    targets = RolloutTargets(
        devices=args.devices.split(",") if args.devices else [],
        groups=args.groups.split(",") if args.groups else [],
        whole_fleet=not (args.devices or args.groups),
    )
    plane = _control_plane(config)
    try:
        request = RolloutRequest(
            version=args.version, rollout_id=args.rollout_id, targets=targets, params=params
        )
        rollout_id = plane.controller.start_request(request, config.model_line.name, params)
        print(f"started {rollout_id}", flush=True)
        if args.wait:
            return _follow(plane, rollout_id)
        _print_status(plane, rollout_id)
        return 0
    finally:
        plane.stop()


def _latest_rollout(plane: ControlPlane, rollout_id: str | None) -> str:
    from cloud_trainer.fleet.rollout import RolloutError  # noqa: PLC0415

    if rollout_id:
        return rollout_id
    known = plane.controller.rollouts()
    if not known:
        raise RolloutError("no rollout yet on this fleet")
    return known[0]


def _rollout_status(args: argparse.Namespace) -> int:
    plane = _control_plane(_config(args), connect=False)
    _print_status(plane, _latest_rollout(plane, args.rollout_id))
    return 0


def _rollout_action(args: argparse.Namespace) -> int:
    config = _config(args)
    needs_mqtt = args.rollout_command in ("abort", "rollback", "wait", "resume")
    plane = _control_plane(config, connect=needs_mqtt)
    try:
        rollout_id = _latest_rollout(plane, args.rollout_id)
        controller = plane.controller
        if args.rollout_command == "wait":
            return _follow(plane, rollout_id)
        controller.act(rollout_id, RolloutAction(args.rollout_command))
        _print_status(plane, rollout_id)
        return 0
    finally:
        if needs_mqtt:
            plane.stop()


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="trainer YAML (env LINEFLEET_TRAINER_* wins)")
    parser.add_argument("--work-dir", type=Path, help="override work_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-trainer", description="linefleet trainer, registry and rollout controller"
    )
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="create an Ed25519 manifest-signing key pair")
    keygen.add_argument("--key-id", required=True, help="id agents will know the key by")
    keygen.add_argument("--out-dir", type=Path, default=Path())
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(handler=_keygen)

    synth = commands.add_parser("synth-dataset", help="write a YOLO dataset of the synthetic line")
    synth.add_argument("--out-dir", type=Path, required=True)
    synth.add_argument("--train", type=int, default=200)
    synth.add_argument("--val", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--drift", action="append", default=None, help="drift preset (repeat to mix)"
    )
    synth.set_defaults(handler=_synth_dataset)

    acl = commands.add_parser("fleet-acl", help="mosquitto ACL for a fleet inventory")
    acl.add_argument("--inventory", type=Path, required=True)
    acl.add_argument("--out", type=Path)
    acl.set_defaults(handler=_fleet_acl)

    retrain = commands.add_parser(
        "retrain",
        help="hard examples -> gated, signed model (exit 0 published, 3 rejected, 4 skipped)",
    )
    _add_config(retrain)
    retrain.add_argument("--run-id", help="resume or name a run (default: a fresh id)")
    retrain.set_defaults(handler=_retrain)

    train_run = commands.add_parser(
        "train-run", help="run (or resume) the training of a stored run spec: the GPU VM's entry"
    )
    _add_config(train_run)
    train_run.add_argument("--run-id", required=True)
    train_run.set_defaults(handler=_train_run)

    sky_task = commands.add_parser("skypilot-task", help="print the SkyPilot task of a run")
    _add_config(sky_task)
    sky_task.add_argument("--run-id", required=True)
    sky_task.set_defaults(handler=_skypilot_task)

    models = commands.add_parser("models", help="the model registry")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = model_commands.add_parser("list", help="versions of the model line")
    _add_config(listing)
    listing.set_defaults(handler=_models_list)
    show = model_commands.add_parser("show", help="a version's signed manifest")
    _add_config(show)
    show.add_argument("version", type=int, nargs="?", help="default: latest published")
    show.set_defaults(handler=_models_show)
    register = model_commands.add_parser("register", help="publish an existing ONNX (+ .pt)")
    _add_config(register)
    register.add_argument("--onnx", type=Path, required=True)
    register.add_argument("--weights", type=Path, help=".pt weights, needed to fine-tune later")
    register.add_argument(
        "--dataset-folder", type=Path, help="YOLO folder it was trained on (replayed later)"
    )
    register.add_argument("--dataset-version", default="bootstrap")
    register.add_argument("--notes", default="")
    register.set_defaults(handler=_models_register)

    labels = commands.add_parser("labels", help="labels for hard examples")
    label_commands = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    label_import = label_commands.add_parser(
        "import", help="upload YOLO .txt labels (named by frame id) from a labeling tool export"
    )
    _add_config(label_import)
    label_import.add_argument("--from", dest="source", type=Path, required=True)
    label_import.set_defaults(handler=_labels_import)
    push = label_commands.add_parser(
        "push", help="new hard examples to Label Studio as tasks with pre-labels (idempotent)"
    )
    _add_config(push)
    push.add_argument("--limit", type=_positive_int, help="push at most N, most useful first")
    push.set_defaults(handler=_label_studio)
    pull = label_commands.add_parser(
        "pull", help="finished Label Studio annotations to YOLO labels (resumable)"
    )
    _add_config(pull)
    pull.set_defaults(handler=_label_studio)
    quality = label_commands.add_parser(
        "quality", help="how much people corrected each model version's pre-labels, per class"
    )
    _add_config(quality)
    quality.set_defaults(handler=_label_studio)

    rollout = commands.add_parser("rollout", help="staged rollouts of a model version")
    rollout_commands = rollout.add_subparsers(
        dest="rollout_command", metavar="ACTION", required=True
    )
    start = rollout_commands.add_parser("start", help="start a rollout (default: whole fleet)")
    _add_config(start)
    start.add_argument("--version", type=int, required=True)
    start.add_argument("--rollout-id")
    start.add_argument("--devices", help="comma-separated device ids")
    start.add_argument("--groups", help="comma-separated groups")
    start.add_argument("--waves", help="cumulative fractions, e.g. 0.01,0.1,0.5,1")
    start.add_argument("--soak-s", type=float)
    start.add_argument("--max-failures", type=int)
    start.add_argument("--max-failure-ratio", type=float)
    start.add_argument("--device-timeout-s", type=float)
    start.add_argument("--wait", action="store_true", help="drive it here until it ends")
    start.set_defaults(handler=_rollout_start)
    status = rollout_commands.add_parser("status", help="a rollout's waves (default: latest)")
    _add_config(status)
    status.add_argument("rollout_id", nargs="?")
    status.set_defaults(handler=_rollout_status)
    for action, text in (
        ("pause", "stop starting new waves"),
        ("resume", "continue a paused rollout"),
        ("abort", "stop, and send touched devices back to their previous version"),
        ("rollback", "send every touched device back, even after success"),
        ("wait", "drive a rollout here until it ends (e.g. after a controller restart)"),
    ):
        sub = rollout_commands.add_parser(action, help=text)
        _add_config(sub)
        sub.add_argument("rollout_id", nargs="?")
        sub.set_defaults(handler=_rollout_action)

    serve = commands.add_parser(
        "serve", help="retrain triggers (cron, threshold) and the rollout controller loop"
    )
    _add_config(serve)
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "drift", "unset") is None:
        args.drift = ["none"]
    try:
        code: int = args.handler(args)
    except (LinefleetError, ValueError, OSError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
