#!/usr/bin/env bash
# Issue 18's GPU figures in one run on an NVIDIA box (CUDA 12, TensorRT 10): a few minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# Prepares its own virtual environment (.venv-gpu: the trainer extra for the exports and the
# ultralytics peer, onnxruntime-gpu in place of onnxruntime, tensorrt), then measures:
#   1. providers.py: which provider the agent's runner gets (CPU; CUDA; TensorRT), load and
#      warm-up time (TensorRT: the engine build, then a reload from the version's engine
#      folder), latency, output parity against the CPU;
#   2. pipeline.py --provider tensorrt: the agent's pipeline with the variants the trainer
#      makes (INT8, fp16), chosen as the agent chooses, against its limit and against
#      ultralytics on its own TensorRT fp16 engine, at 320 and 640, and with 4 cameras;
#   3. the same with --provider cuda.
# Each prints one JSON object on its last line; they are copied to OUT_DIR (default
# benchmarks/results/gpu-<date>/). Nothing is downloaded but Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu-$(date +%Y%m%d)}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --upgrade pip
  .venv-gpu/bin/pip install -q -e '.[trainer]'
  # One onnxruntime only: the GPU build shares the module name with the CPU one.
  .venv-gpu/bin/pip uninstall -q -y onnxruntime
  .venv-gpu/bin/pip install -q onnxruntime-gpu tensorrt
fi
py=.venv-gpu/bin/python
weights=artifacts/bootstrap-yolov8n-320.pt
models="$out/models"
mkdir -p "$models"

$py -c "import onnxruntime as ort; print(ort.__version__, ort.get_available_providers())" \
  | tee "$out/onnxruntime.txt"
# The exports (ONNX, dynamic batch, TensorRT engine) are made once by the first pipeline run.
$py benchmarks/pipeline.py --weights "$weights" --models-dir "$models" --provider tensorrt \
  --variants int8,fp16 --sizes 320,640 --cameras 4 --runtime auto \
  | tee "$out/pipeline-tensorrt.log"
tail -n 1 "$out/pipeline-tensorrt.log" > "$out/pipeline-tensorrt.json"
$py benchmarks/pipeline.py --models-dir "$models" --weights "$weights" --provider cuda \
  --variants int8,fp16 --sizes 320,640 --cameras 4 --runtime auto \
  | tee "$out/pipeline-cuda.log"
tail -n 1 "$out/pipeline-cuda.log" > "$out/pipeline-cuda.json"
for size in 320 640; do
  $py benchmarks/providers.py --model "$models/model_${size}.onnx" \
    | tee "$out/providers-${size}.log"
  tail -n 1 "$out/providers-${size}.log" > "$out/providers-${size}.json"
done
echo "results in $out"
