from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import KeyLoadError, SignatureError, UntrustedKeyError
from shared.manifest import ModelManifest
from shared.signing import SigningKey, Verifier, load_public_key
from tests.factories import make_desired, make_manifest


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("trainer-2026")


@pytest.fixture
def verifier(key: SigningKey) -> Verifier:
    return Verifier({key.key_id: load_public_key(key.public_pem(), key_id=key.key_id)})


def test_sign_then_verify(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign(make_manifest())
    assert signed.key_id == "trainer-2026" and signed.signature
    verifier.verify(signed)


def test_verify_survives_json_round_trip_with_reordered_keys(
    key: SigningKey, verifier: Verifier
) -> None:
    signed = key.sign(make_manifest())
    document = json.loads(signed.model_dump_json())
    reordered = json.dumps(dict(reversed(list(document.items()))), indent=2, ensure_ascii=True)
    verifier.verify(ModelManifest.model_validate_json(reordered))


def test_tampered_field_fails(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign(make_manifest())
    tampered = signed.model_copy(update={"version": signed.version + 1})
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(tampered)


def test_tampered_artifact_hash_fails(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign(make_manifest())
    artifact = signed.artifact.model_copy(update={"sha256": "cd" * 32})
    with pytest.raises(SignatureError):
        verifier.verify(signed.model_copy(update={"artifact": artifact}))


def test_untrusted_key_id(verifier: Verifier) -> None:
    other = SigningKey.generate("attacker")
    with pytest.raises(UntrustedKeyError, match="attacker"):
        verifier.verify(other.sign(make_manifest()))


def test_key_id_relabel_fails(verifier: Verifier, key: SigningKey) -> None:
    # Signed by an untrusted key but claiming the trusted key's id.
    forged = SigningKey.generate("attacker").sign(make_manifest())
    forged = forged.model_copy(update={"key_id": key.key_id})
    with pytest.raises(SignatureError):
        verifier.verify(forged)


def test_missing_and_malformed_signature(verifier: Verifier, key: SigningKey) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verifier.verify(make_manifest())
    signed = key.sign(make_manifest())
    with pytest.raises(SignatureError, match="base64"):
        verifier.verify(signed.model_copy(update={"signature": "***not base64***"}))
    with pytest.raises(SignatureError):
        verifier.verify(signed.model_copy(update={"signature": "AAAA"}))


def test_desired_state_is_signed_the_same_way(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign(make_desired(make_manifest()))
    verifier.verify(signed)
    with pytest.raises(SignatureError):
        verifier.verify(signed.model_copy(update={"sequence": 99}))


def test_pem_round_trip_and_file_loading(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(key.private_pem())
    again = SigningKey.from_file("trainer-2026", path)
    pub = tmp_path / "k.pub"
    pub.write_bytes(key.public_pem())
    Verifier.from_pem_files({"trainer-2026": pub}).verify(again.sign(make_manifest()))


def test_key_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read"):
        SigningKey.from_file("k", tmp_path / "missing.pem")
    with pytest.raises(KeyLoadError, match="PEM"):
        SigningKey.from_pem("k", b"garbage")
    with pytest.raises(KeyLoadError, match="PEM public key"):
        load_public_key(b"garbage", key_id="k")
    with pytest.raises(KeyLoadError, match="invalid key id"):
        SigningKey.generate("../etc")
    with pytest.raises(KeyLoadError, match="invalid trusted key id"):
        Verifier({"a/b": load_public_key(SigningKey.generate("x").public_pem(), key_id="x")})
