from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_trainer.cli import main
from shared.signing import SigningKey, Verifier
from tests.factories import make_manifest


def test_keygen_writes_a_usable_private_key_with_tight_permissions(tmp_path: Path) -> None:
    assert main(["keygen", "--key-id", "trainer-1", "--out-dir", str(tmp_path)]) == 0
    private = tmp_path / "trainer-1.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = SigningKey.from_file("trainer-1", private)
    verifier = Verifier.from_pem_files({"trainer-1": tmp_path / "trainer-1.pub"})
    verifier.verify(key.sign(make_manifest()))


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--key-id", "k", "--out-dir", str(tmp_path)]) == 0
    assert main(["keygen", "--key-id", "k", "--out-dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err


def test_keygen_rejects_bad_key_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--key-id", "../x", "--out-dir", str(tmp_path)]) == 1
    assert "invalid key id" in capsys.readouterr().err


def test_synth_dataset_command(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert main(["synth-dataset", "--out-dir", str(out), "--train", "3", "--val", "1"]) == 0
    assert len(list((out / "images/train").glob("*.jpg"))) == 3


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("edge-agent", "cloud-trainer"):
        result = subprocess.run(
            [str(bindir / script), "--version"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert script in result.stdout
