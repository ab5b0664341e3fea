"""Wall time per retrain stage on the synthetic line, and the share of everything but training.

    python benchmarks/retrain.py [--images 500] [--epochs 3] [--imgsz 320] [--drift lighting]

A moto (or ``--s3 nanio``) S3 server is started here; the committed bootstrap model is
registered as v1; ``--images`` drifted hard examples (with the synthetic line's exact labels)
are uploaded as agents would;
then one ``cloud-trainer retrain`` runs in-process. The peer of the non-training stages is the
training stage of the same run: ``non_training_share`` = (select + build + export + evaluate +
publish) / total. Also reports the gate's before/after accuracy on the held-out set.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_trainer.config import StorageSection, TrainerConfig  # noqa: E402
from cloud_trainer.release.model_registry import ModelRegistry  # noqa: E402
from cloud_trainer.release.register import register_model  # noqa: E402
from cloud_trainer.retrain import Retrainer  # noqa: E402
from cloud_trainer.store import ObjectStore  # noqa: E402
from cloud_trainer.training.offline import prepare_offline_ultralytics  # noqa: E402
from shared.signing import SigningKey  # noqa: E402
from testing.local_services import MotoS3Process, NanioS3Process  # noqa: E402
from testing.synthetic_examples import upload_examples  # noqa: E402

BOOTSTRAP = ROOT / "artifacts" / "bootstrap-yolov8n-320.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--drift", default="lighting")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--s3",
        choices=("moto", "nanio"),
        default="moto",
        help="S3 server to start: moto enforces conditional writes as AWS does; nanio is "
        "lighter to install (a GPU box for a one-off measurement)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lf-bench-retrain-"))
    try:
        prepare_offline_ultralytics(work)
        from ultralytics import YOLO

        weights = work / "bootstrap.pt"
        shutil.copyfile(BOOTSTRAP, weights)
        onnx = Path(YOLO(str(weights)).export(format="onnx", imgsz=args.imgsz, opset=18))
        server_type = MotoS3Process if args.s3 == "moto" else NanioS3Process
        with server_type(work / "s3") as server:
            section = StorageSection(
                bucket="bench-retrain",
                endpoint_url=server.endpoint_url,
                access_key_id=server.access_key,
                secret_access_key=server.secret_key,  # type: ignore[arg-type]
            )
            store = ObjectStore.from_config(section)
            store.create_bucket()
            key = SigningKey.generate("bench")
            key_file = work / "bench.key"
            key_file.write_bytes(key.private_pem())
            config = TrainerConfig(
                storage=section,
                model_line={"name": "bench-line", "fleet": "bench", "imgsz": args.imgsz},  # type: ignore[arg-type]
                labeling={"source": "synthetic"},  # type: ignore[arg-type]
                dataset={"replay_previous": False},  # type: ignore[arg-type]
                training={"epochs": args.epochs, "batch": args.batch, "device": args.device},  # type: ignore[arg-type]
                gate={
                    "map50_tolerance": 1.0,
                    "map50_95_tolerance": 1.0,
                    "class_recall_tolerance": 1.0,
                },  # type: ignore[arg-type]
                signing={"key_id": "bench", "key_file": key_file},  # type: ignore[arg-type]
                work_dir=work / "work",
            )
            register_model(
                config, ModelRegistry(store, "bench-line"), key, onnx=onnx, weights=weights
            )
            upload_started = time.perf_counter()
            upload_examples(store, fleet="bench", count=args.images, drift=args.drift, seed=11)
            upload_s = time.perf_counter() - upload_started
            report = Retrainer(
                config, store, announce=lambda line: print(line, file=sys.stderr)
            ).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stages = report.stage_seconds
    total = sum(stages.values())
    training = report.training
    epoch_seconds = [e.seconds for e in training.epochs] if training else []
    result = {
        "benchmark": "retrain",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": training.device if training else None,
        "images": args.images,
        "imgsz": args.imgsz,
        "epochs": args.epochs,
        "drift": args.drift,
        "status": report.status,
        "stage_seconds": stages,
        "train_epoch_seconds": epoch_seconds,
        "non_training_share": round((total - stages.get("train", 0.0)) / total, 4)
        if total
        else None,
        "upload_examples_s": round(upload_s, 2),
        "dataset_counts": report.dataset_counts,
        "map50_production_on_holdout": report.gate.production.map50 if report.gate else None,
        "map50_candidate_on_holdout": report.gate.candidate.map50 if report.gate else None,
        "parity_max_abs_diff": report.parity_max_abs_diff,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
