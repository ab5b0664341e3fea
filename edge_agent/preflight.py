"""What ``edge-agent check-config`` checks beyond the config's own validation: the files and
resources it names. Validators must not do I/O, so these checks live here; ``check-config``
runs them all and lists every problem, where ``run`` would stop at the first one.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.config import AgentConfig, resolve_secret_files
from shared.errors import LinefleetError
from shared.signing import Verifier


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def preflight(config: AgentConfig) -> list[str]:
    """Every problem ``run`` would meet with these files and folders; empty when all is well."""
    problems: list[str] = []
    try:
        resolve_secret_files(config)
    except LinefleetError as exc:
        problems.append(str(exc))
    for key_id, path in config.ota.trusted_keys.items():
        try:
            Verifier.from_pem_files({key_id: path})
        except LinefleetError as exc:
            problems.append(f"ota.trusted_keys.{key_id}: {exc}")
    tls = config.mqtt.tls
    if config.mqtt.enabled and tls is not None:
        tls_files: list[tuple[str, Path | None]] = [
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
        ]
        for name, tls_file in tls_files:
            if tls_file is not None and not _readable(tls_file):
                problems.append(f"mqtt.tls.{name}: {tls_file} is not a readable file")
    models: list[tuple[str, Path | None]] = [
        ("path", config.model.path),
        ("shadow_path", config.model.shadow_path),
    ]
    for name, model_path in models:
        if model_path is not None:
            problems += _model_problems(f"model.{name}", model_path, config)
    for camera in config.cameras:
        url = getattr(camera, "url", None)
        if (
            getattr(camera, "kind", "") == "file"
            and isinstance(url, str)
            and not Path(url).is_file()
        ):
            problems.append(f"cameras.{camera.id}.url: file {url} does not exist")
    problems += _state_dir_problems(config.state_dir)
    return problems


def _model_problems(where: str, path: Path, config: AgentConfig) -> list[str]:
    if not path.exists():
        return [f"{where}: file {path} does not exist"]
    if not _readable(path):
        return [f"{where}: {path} is not a readable file"]
    # Loading is the only check onnxruntime trusts: a file may be there and not be a model.
    from edge_agent.agent import runner_options  # noqa: PLC0415
    from edge_agent.model_loading import load_model, read_local_manifest  # noqa: PLC0415

    try:
        model = load_model(path, runner_options(config), read_local_manifest(path))
    except LinefleetError as exc:
        return [f"{where}: {exc}"]
    model.runner.close()
    return []


def _state_dir_problems(state_dir: Path) -> list[str]:
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"state_dir: {state_dir} cannot be created or written (nearest: {existing})"]
    return []
