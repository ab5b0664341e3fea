from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.agent import build_source
from edge_agent.camera import OpenCVSource, PyAVSource
from edge_agent.cli import main
from edge_agent.config import StreamCamera, SyntheticCamera, load_config
from edge_agent.errors import ConfigError

GOOD = """
device: {id: edge-07, fleet: plant1, group: line-a}
cameras:
  - {kind: synthetic, id: cam0, seed: 3, drift: lighting}
  - {kind: stream, id: cam1, url: "rtsp://user:pw@10.0.0.9/h264"}
  - {kind: usb, id: cam2, url: 0}
model: {conf_threshold: 0.3, providers: [CUDAExecutionProvider, CPUExecutionProvider]}
mqtt: {host: broker.plant, port: 8883, events_qos: 1}
api: {port: 9000, token: s3cret}
state_dir: /tmp/lf-state
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_valid_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.device.id == "edge-07"
    assert isinstance(config.cameras[0], SyntheticCamera) and config.cameras[0].drift == "lighting"
    assert isinstance(config.cameras[1], StreamCamera)
    assert config.api.token is not None and config.api.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_defaults_without_file() -> None:
    config = load_config(None)
    assert config.cameras[0].id == "cam0" and config.api.host == "127.0.0.1"


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEFLEET_MQTT__HOST", "other.broker")
    monkeypatch.setenv("LINEFLEET_DEVICE__ID", "edge-99")
    config = load_config(write(tmp_path, GOOD))
    assert config.mqtt.host == "other.broker" and config.device.id == "edge-99"
    assert config.mqtt.port == 8883


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt: {hots: x}\n", "mqtt.hots: Extra inputs are not permitted"),
        ("colour: blue\n", "colour: Extra inputs are not permitted"),
        ("cameras: [{kind: synthetic, id: a}, {kind: synthetic, id: a}]\n", "unique"),
        ("cameras: [{kind: stream, id: a, url: /dev/video0}]\n", "rtsp://"),
        ("cameras: [{kind: usb, id: a, url: cam}]\n", "device index"),
        ("cameras: [{kind: ftp, id: a}]\n", "cameras.0"),
        ("cameras: [{kind: synthetic, id: a, drift: storm}]\n", "unknown drift"),
        ("device: {id: ../etc}\n", "device.id"),
        ("mqtt: {port: 70000}\n", "mqtt.port"),
        ("model: {providers: [MagicProvider]}\n", "model.providers.0"),
        ("cameras: []\n", "cameras"),
        ("cameras: [{kind: usb, id: a, url: 0, capture: pyav}]\n", "read through OpenCV"),
        (
            "cameras: [{kind: stream, id: a, url: 'rtsp://c/1', capture: opencv, "
            "decode: keyframes}]\n",
            "decode: keyframes and hwaccel need capture pyav",
        ),
        ("cameras: [{kind: stream, id: a, url: 'rtsp://c/1', rtsp_transport: http}]\n", "tcp"),
        ("cameras: [{kind: stream, id: a, url: 'rtsp://c/1', auth_retry_s: 0}]\n", "auth_retry"),
    ],
)
def test_invalid_configs_name_the_location(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="syntax error at line 2, column 8"):
        load_config(write(tmp_path, "device:\n  id: a: b\n"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, text))


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    assert "ok (3 camera(s), device edge-07)" in capsys.readouterr().out
    assert main(["check-config", "--config", str(write(tmp_path, "mqtt: {hots: x}\n"))]) == 1
    assert "mqtt.hots" in capsys.readouterr().err
    missing = "model: {path: /nonexistent/model.onnx}\n"
    assert main(["check-config", "--config", str(write(tmp_path, missing))]) == 1
    assert "model.path: file /nonexistent/model.onnx does not exist" in capsys.readouterr().err


def test_thread_spinning_is_off_unless_configured(tmp_path: Path) -> None:
    from edge_agent.agent import runner_options
    from edge_agent.inference.ort_backend import session_options

    assert runner_options(load_config(None)).thread_spinning is False
    spinning = load_config(write(tmp_path, "model: {thread_spinning: true}\n"))
    assert runner_options(spinning).thread_spinning is True
    key = "session.intra_op.allow_spinning"
    assert session_options(2).get_session_config_entry(key) == "0"
    assert session_options(2, spinning=True).get_session_config_entry(key) == "1"


def test_stream_cameras_get_the_pyav_capture_and_usb_cameras_opencv() -> None:
    stream = StreamCamera(kind="stream", id="a", url="rtsp://c/1", decode="keyframes")
    assert isinstance(build_source(stream), PyAVSource)
    assert isinstance(build_source(StreamCamera(kind="file", id="f", url="clip.mp4")), PyAVSource)
    assert isinstance(build_source(StreamCamera(kind="usb", id="u", url=0)), OpenCVSource)
    pinned = StreamCamera(kind="stream", id="b", url="rtsp://c/1", capture="opencv")
    assert isinstance(build_source(pinned), OpenCVSource)
