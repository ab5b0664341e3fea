from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import PayloadError
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    CameraHealth,
    DesiredState,
    DetectionEvent,
    DetectionRecord,
    Heartbeat,
    OnlineStatus,
    OtaState,
    ReportedState,
    parse_payload,
)
from tests.factories import NOW, make_desired

MESSAGES = [
    make_desired(),
    ReportedState(
        device_id="edge-01",
        fleet="plant1",
        group="line-a",
        agent_version="0.1.0",
        ota_state=OtaState.ACTIVE,
        model_name="line-detector",
        running_version=3,
        sequence=7,
        updated_at=NOW,
    ),
    Heartbeat(
        device_id="edge-01",
        sent_at=NOW,
        uptime_s=12.5,
        fps=29.7,
        cameras={"cam0": CameraHealth(state="streaming", fps=29.7)},
    ),
    OnlineStatus(device_id="edge-01", online=False),
    DetectionEvent(
        device_id="edge-01",
        camera_id="cam0",
        frame_id="cam0-000001",
        captured_at=NOW,
        image_width=640,
        image_height=640,
        detections=[DetectionRecord(class_id=1, confidence=0.9, xyxy=(1, 2, 3, 4))],
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    model = type(message)
    assert parse_payload(model, message.to_payload()) == message  # type: ignore[attr-defined]


def test_oversized_payload() -> None:
    raw = b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"
    with pytest.raises(PayloadError, match="exceeds"):
        parse_payload(OnlineStatus, raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"device_id": "e1", "online": "maybe"}', "online"),
        (b'{"device_id": "e1", "online": true, "extra": 1}', "extra"),
        (b'{"device_id": "e1/../x", "online": true}', "device_id"),
        (b'{"device_id": "e1/#", "online": true}', "device_id"),
        (b'{"device_id": "' + b"a" * 5000 + b'", "online": true}', "device_id"),
        (b'{"schema_version": 2, "device_id": "e1", "online": true}', "schema_version"),
    ],
)
def test_hostile_payloads_are_rejected_clearly(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_payload(OnlineStatus, raw)


def test_error_message_is_bounded_and_has_no_values() -> None:
    document = {f"field{i}": "SECRET" for i in range(50)}
    with pytest.raises(PayloadError) as info:
        parse_payload(Heartbeat, json.dumps(document).encode())
    assert "SECRET" not in str(info.value)
    assert "more" in str(info.value)
    assert len(str(info.value)) < 1000


def test_desired_payload_with_tampered_manifest_type() -> None:
    document = json.loads(make_desired().to_payload())
    document["manifest"]["artifact"]["key"] = "../../etc/passwd"
    with pytest.raises(PayloadError, match=r"manifest\.artifact\.key"):
        parse_payload(DesiredState, json.dumps(document).encode())


def test_detection_event_limits() -> None:
    record = {"class_id": 0, "confidence": 0.5, "xyxy": [0, 0, 1, 1]}
    document = json.loads(MESSAGES[4].to_payload())
    document["detections"] = [record] * 1001
    with pytest.raises(PayloadError, match="detections"):
        parse_payload(DetectionEvent, json.dumps(document).encode())
    document["detections"] = [{**record, "xyxy": [5, 0, 1, 1]}]
    with pytest.raises(PayloadError, match="x2 >= x1"):
        parse_payload(DetectionEvent, json.dumps(document).encode())


MODELS = [DesiredState, ReportedState, Heartbeat, OnlineStatus, DetectionEvent]


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2048), which=st.sampled_from(MODELS))
def test_arbitrary_bytes_only_ever_raise_payload_error(raw: bytes, which: type) -> None:
    with contextlib.suppress(PayloadError):
        parse_payload(which, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(st.text(max_size=20), json_values, max_size=8),
    which=st.sampled_from(MODELS),
)
def test_arbitrary_json_objects_only_ever_raise_payload_error(document: dict, which: type) -> None:
    with contextlib.suppress(PayloadError):
        parse_payload(which, json.dumps(document).encode())


def _reported_document(**fields: object) -> dict[str, object]:
    return {
        "device_id": "edge-01",
        "fleet": "plant1",
        "agent_version": "0.1.0",
        "ota_state": "active",
        "running_version": 2,
        "sequence": 7,
        "updated_at": NOW.isoformat(),
        **fields,
    }


def test_a_schema_1_report_still_parses_and_its_probation_is_read() -> None:
    """Agents before schema 2 said 'on probation' in the reason and had no probation field."""
    old = _reported_document(schema_version=1, reason="on probation")
    parsed = parse_payload(ReportedState, json.dumps(old).encode())
    assert parsed.probation is True and parsed.schema_version == 1
    proven = parse_payload(ReportedState, json.dumps({**old, "reason": ""}).encode())
    assert proven.probation is False


def test_schema_2_reports_say_probation_in_its_own_field() -> None:
    document = _reported_document(reason="on probation")  # schema 2: the reason is just text
    assert parse_payload(ReportedState, json.dumps(document).encode()).probation is False
    flagged = _reported_document(probation=True)
    assert parse_payload(ReportedState, json.dumps(flagged).encode()).probation is True
    with pytest.raises(PayloadError, match="probation applies only to an active version"):
        parse_payload(
            ReportedState,
            json.dumps(_reported_document(probation=True, ota_state="failed")).encode(),
        )
    with pytest.raises(PayloadError, match="schema_version"):
        parse_payload(ReportedState, json.dumps(_reported_document(schema_version=3)).encode())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b'{"sequence": ' + b"9" * 5000 + b"}", "cannot be read"),
    ],
    ids=["deep-array", "deep-object", "huge-integer"],
)
def test_parser_edges_are_contract_errors(payload: bytes, reason: str) -> None:
    """Found by hostile testing, not by hypothesis: both used to raise RecursionError or
    ValueError out of parse_payload (a traceback in the agent's log, nothing reported)."""
    for model in (DesiredState, ReportedState, Heartbeat):
        with pytest.raises(PayloadError, match=reason):
            parse_payload(model, payload, max_bytes=len(payload) + 1)
