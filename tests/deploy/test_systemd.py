"""The shipped unit passes systemd's own checks; the install script stages a working tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "edge-agent.service"


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze missing: apt-get install systemd (make test does this)")
    return found


def unit_with_exec(tmp_path: Path, executable: Path) -> Path:
    text = UNIT.read_text().replace("/opt/linefleet/venv/bin/edge-agent", str(executable))
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    return unit


def test_unit_verifies_with_no_warning(tmp_path: Path) -> None:
    unit = unit_with_exec(tmp_path, Path(sys.executable).with_name("edge-agent"))
    result = subprocess.run(
        [_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_unit_has_the_promised_settings() -> None:
    text = UNIT.read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=linefleet",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/linefleet",
        "LoadCredential=",
        "NoNewPrivileges=true",
    ):
        assert setting in text


def test_security_exposure_is_ok(tmp_path: Path) -> None:
    unit = unit_with_exec(tmp_path, Path(sys.executable).with_name("edge-agent"))
    out = subprocess.run(
        [_analyze(), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    score = float(out.split("Overall exposure level for edge-agent.service:")[1].split()[0])
    assert score <= 4.0, out[-500:]


@pytest.mark.slow
def test_install_script_stages_everything(tmp_path: Path) -> None:
    staging = tmp_path / "root"
    command = [
        "bash",
        str(ROOT / "deploy" / "install-edge.sh"),
        "--root",
        str(staging),
        "--no-start",
        "--no-user",
        "--pip-arg",
        "--no-deps",
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (staging / "opt/linefleet/venv/bin/edge-agent").is_file()
    config = staging / "etc/linefleet/agent.yaml"
    assert config.is_file() and (staging / "etc/systemd/system/edge-agent.service").is_file()
    assert (staging / "etc/linefleet/credentials").stat().st_mode & 0o777 == 0o700
    config.write_text("device: {id: edited}\n")
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "kept existing" in again.stdout
    assert config.read_text() == "device: {id: edited}\n", "never overwrites the plant's config"
    # The example config the script installs is valid for the agent.
    check = subprocess.run(
        [
            Path(sys.executable).with_name("edge-agent"),
            "check-config",
            "--config",
            str(ROOT / "deploy/agent.example.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "model.path" in check.stderr or check.returncode == 0, check.stderr
