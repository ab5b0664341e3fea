from __future__ import annotations

from pathlib import Path

import pytest

from cloud_trainer.config import load_trainer_config
from cloud_trainer.errors import TrainerConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "s3-secret"
    secret.write_text("from-file\n")
    token = tmp_path / "label-studio.token"
    token.write_text("eyJ.personal.token\n")
    text = (REPO / "deploy" / "trainer.example.yaml").read_text()
    config_file = tmp_path / "trainer.yaml"
    text = text.replace("/etc/linefleet/credentials/s3-secret", str(secret))
    text = text.replace("/etc/linefleet/credentials/label-studio.token", str(token))
    config_file.write_text(text)
    monkeypatch.setenv("LINEFLEET_TRAINER_TRAINING__EPOCHS", "7")
    config = load_trainer_config(config_file)
    assert config.training.epochs == 7  # env wins over the file
    assert config.storage.secret_access_key is not None
    assert config.storage.secret_access_key.get_secret_value() == "from-file"
    assert config.fleet.rollout.waves == [0.01, 0.1, 0.5, 1.0]
    studio = config.labeling.label_studio
    assert studio.token is not None and studio.token.get_secret_value() == "eyJ.personal.token"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("training: {epochz: 3}", "training.epochz"),
        ("labeling: {source: teacher}", "teacher_model"),
        ("dataset: {holdout_percent: 60, val_percent: 40}", "leave >= 10%"),
        ("fleet: {rollout: {waves: [0.5, 0.2, 1.0]}}", "strictly increase"),
        ("model_line: {imgsz: 321}", "multiple of 32"),
        ("training: [1, 2", "YAML syntax error"),
        ("labeling: {label_studio: {url: 'ftp://x'}}", "http:// or https://"),
        ("labeling: {label_studio: {token_file: /nonexistent/t}}", "token_file"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(TrainerConfigError, match=message):
        load_trainer_config(path)
