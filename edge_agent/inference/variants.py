"""Which of a version's model files this box may run: the fp32 reference, and the variants the
manifest lists for an accelerator the box has (INT8 for CPUs, fp16 for GPUs), unless config
pins a precision. A listed file that is missing or not the manifest's bytes is refused with
the reason, never loaded; :mod:`edge_agent.inference.selection` then picks among the rest on
the box's own frames.

Variants live beside the reference: ``model.onnx`` -> ``model.int8.onnx``, ``model.fp16.onnx``
(the OTA store's layout, and the layout a plant engineer copies next to a configured model
with its ``manifest.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.inference.runner import RunnerOptions
from shared.digests import file_sha256
from shared.manifest import ModelManifest, ModelVariant

Precision = Literal["fp32", "fp16", "int8"]
PrecisionSetting = Literal["auto", "fp32", "fp16", "int8"]
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class ModelFile:
    precision: Precision
    path: Path
    # False for the fp32 reference when config pins another precision the version offers:
    # it is loaded only as the yardstick.
    candidate: bool = True
    # The runtimes the trainer vouched for (a variant's manifest entry); None: any.
    runtimes: tuple[str, ...] | None = None

    def vouched_for(self, runtime: str) -> bool:
        return self.runtimes is None or runtime in self.runtimes


def variant_path(reference: Path, precision: str) -> Path:
    return reference.with_name(f"{reference.stem}.{precision}{reference.suffix}")


def box_accelerators(options: RunnerOptions) -> frozenset[str]:
    """``cpu`` always; ``gpu`` when a GPU runtime is configured and installed."""
    found = {"cpu"}
    if options.openvino_device.upper().startswith("GPU"):
        found.add("gpu")
    wanted = [p for p in options.providers if p in GPU_PROVIDERS]
    if wanted:
        import onnxruntime as ort  # noqa: PLC0415 - only asked when a GPU provider is configured

        if set(wanted) & set(ort.get_available_providers()):
            found.add("gpu")
    return frozenset(found)


def wanted_variants(
    manifest: ModelManifest | None, options: RunnerOptions, precision: PrecisionSetting
) -> list[ModelVariant]:
    """The variants worth fetching and trying here."""
    if manifest is None or precision == "fp32":
        return []
    accelerators = box_accelerators(options)
    return [
        v
        for v in manifest.variants
        if v.accelerator in accelerators and precision in ("auto", v.precision)
    ]


def model_files(
    reference: Path,
    manifest: ModelManifest | None,
    options: RunnerOptions,
    precision: PrecisionSetting,
) -> tuple[list[ModelFile], dict[str, str]]:
    """The files to choose among (the fp32 reference first) and the variants refused, with
    why. A pinned precision the version does not offer is refused too: the reference runs,
    and the report says so."""
    files = [ModelFile("fp32", reference)]
    refused: dict[str, str] = {}
    for variant in wanted_variants(manifest, options, precision):
        path = variant_path(reference, variant.precision)
        problem = _file_problem(path, variant)
        if problem:
            refused[variant.precision] = problem
        else:
            files.append(ModelFile(variant.precision, path, runtimes=tuple(variant.runtimes)))
    if precision in ("auto", "fp32"):
        return files, refused
    if any(f.precision == precision for f in files):
        files[0] = ModelFile("fp32", reference, candidate=False)
    else:
        refused.setdefault(
            precision,
            f"model.precision is {precision}, but this version has no usable {precision} "
            "variant for this box: running fp32",
        )
    return files, refused


def _file_problem(path: Path, variant: ModelVariant) -> str | None:
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path.name} is missing"
    if size != variant.artifact.size_bytes:
        return f"{path.name} has {size} bytes, the manifest says {variant.artifact.size_bytes}"
    digest = file_sha256(path)
    if digest != variant.artifact.sha256:
        expected = variant.artifact.sha256
        return f"{path.name} sha256 {digest[:12]}… is not the manifest's {expected[:12]}…"
    return None
