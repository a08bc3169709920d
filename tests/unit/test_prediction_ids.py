"""Prediction ids: signed, compact, verified by any replica; tampering, other keys, other
deployments and old ids refused with their reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time

import pytest
from canaryml_server.prediction_ids import (
    MAC_BYTES,
    BadPredictionId,
    IdIssuer,
    IdVerifier,
    check_keys,
    key_id,
)

KEY = b"k" * 32
NEW_KEY = b"n" * 32
DAY_MS = 86_400_000
NOW = 1_800_000_000_000


def _issuer(key: bytes = KEY, **overrides: object) -> IdIssuer:
    values: dict[str, object] = {
        "deployment": "breast-cancer",
        "track": "canary",
        "version": "1.1.0",
        "regression": False,
    }
    values.update(overrides)
    return IdIssuer(key, **values)  # type: ignore[arg-type]


def _verifier(*keys: bytes, deployment: str = "breast-cancer", days: int = 7) -> IdVerifier:
    return IdVerifier(list(keys or [KEY]), deployment=deployment, max_age_ms=days * DAY_MS)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("label", [0, 1, 7, "setosa", "ünïcode", True, False, 2.5, -3])
def test_a_classifier_id_round_trips(label: object) -> None:
    [token] = _issuer().issue([label], now_ms=NOW)
    read = _verifier().verify(token, now_ms=NOW + 1000)
    assert (read.track, read.version, read.predicted_at_ms, read.regression) == (
        "canary",
        "1.1.0",
        NOW,
        False,
    )
    assert read.label == label and type(read.label) is type(label)
    assert len(read.nonce) == 8


@pytest.mark.parametrize("value", [151.25, -0.0, 1e300, math.nan, None])
def test_a_regressor_id_round_trips(value: float | None) -> None:
    [token] = _issuer(regression=True, track="stable").issue([value], now_ms=NOW)
    read = _verifier().verify(token, now_ms=NOW)
    assert read.regression and read.track == "stable"
    if value is None or math.isnan(value):
        assert math.isnan(read.label)
    else:
        assert read.label == value


def test_every_row_gets_its_own_nonce_and_the_ids_are_compact() -> None:
    ids = _issuer().issue([1, 0] * 32, now_ms=NOW)
    assert len(ids) == 64
    nonces = {_verifier().verify(token, now_ms=NOW).nonce for token in ids}
    assert len(nonces) == 64
    assert all(len(token) < 120 for token in ids), max(len(token) for token in ids)
    assert all(set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
               for token in ids)  # fmt: skip
    # No feature value could be in there: the id has room only for its fields.
    assert len(ids[0]) == 64


def test_the_mac_is_hmac_sha256_over_the_deployment_and_the_fields() -> None:
    for key in (KEY, b"x" * 100):  # a key longer than SHA-256's block is hashed first
        [token] = _issuer(key).issue([1], now_ms=NOW)
        raw = _raw(token)
        name = b"breast-cancer"
        message = len(name).to_bytes(2, "big") + name + raw[:-MAC_BYTES]
        expected = hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]
        assert raw[-MAC_BYTES:] == expected
        assert raw[1:5] == key_id(key)


def test_every_altered_byte_is_refused() -> None:
    [token] = _issuer().issue(["setosa"], now_ms=NOW)
    raw = _raw(token)
    verifier = _verifier()
    for position in range(len(raw)):
        for flip in (0x01, 0x80):
            altered = bytearray(raw)
            altered[position] ^= flip
            with pytest.raises(BadPredictionId) as refused:
                verifier.verify(_encode(bytes(altered)), now_ms=NOW)
            assert refused.value.reason in {"malformed", "unknown_key", "other_deployment",
                                            "tampered"}  # fmt: skip
    # A changed label (the likeliest forgery: "my prediction was right") is a bad signature.
    [other] = _issuer().issue(["virginica"], now_ms=NOW)
    forged = _raw(other)[:-MAC_BYTES] + raw[-MAC_BYTES:]
    with pytest.raises(BadPredictionId, match="signature") as refused:
        verifier.verify(_encode(forged), now_ms=NOW)
    assert refused.value.reason == "tampered"
    # Truncated or extended.
    for text in (token[:-4], token + "AAAA", token[:20]):
        with pytest.raises(BadPredictionId):
            verifier.verify(text, now_ms=NOW)


@pytest.mark.parametrize("text", ["", "!!!!", "a b", "é" * 10, "A" * 2000, "AQ", "YWJj"])
def test_garbage_is_malformed(text: str) -> None:
    with pytest.raises(BadPredictionId) as refused:
        _verifier().verify(text, now_ms=NOW)
    assert refused.value.reason == "malformed"


def test_another_key_and_another_deployment_are_refused() -> None:
    [token] = _issuer().issue([1], now_ms=NOW)
    with pytest.raises(BadPredictionId, match="unknown key") as refused:
        _verifier(NEW_KEY).verify(token, now_ms=NOW)
    assert refused.value.reason == "unknown_key"
    with pytest.raises(BadPredictionId, match="another model deployment") as refused:
        _verifier(deployment="other").verify(token, now_ms=NOW)
    assert refused.value.reason == "other_deployment"


def test_expiry() -> None:
    [token] = _issuer().issue([1], now_ms=NOW)
    verifier = _verifier(days=7)
    assert verifier.verify(token, now_ms=NOW + 7 * DAY_MS).predicted_at_ms == NOW
    with pytest.raises(BadPredictionId, match="over the allowed") as refused:
        verifier.verify(token, now_ms=NOW + 7 * DAY_MS + 1)
    assert refused.value.reason == "expired"


def test_rotation_new_key_signs_old_keys_verify_until_dropped() -> None:
    [old] = _issuer(KEY).issue([1], now_ms=NOW)
    [new] = _issuer(NEW_KEY).issue([0], now_ms=NOW)
    rotating = _verifier(NEW_KEY, KEY)
    assert rotating.verify(old, now_ms=NOW).label == 1
    assert rotating.verify(new, now_ms=NOW).label == 0
    with pytest.raises(BadPredictionId) as refused:
        _verifier(NEW_KEY).verify(old, now_ms=NOW)
    assert refused.value.reason == "unknown_key"


def test_keys_must_be_long_and_distinct() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        check_keys([b"short"])
    with pytest.raises(ValueError, match="previous feedback key 1"):
        check_keys([KEY, b"short"])
    with pytest.raises(ValueError, match="same"):
        check_keys([KEY, KEY])
    with pytest.raises(ValueError, match="no feedback key"):
        check_keys([])


def test_issuing_is_cheap() -> None:
    issuer = _issuer()
    labels = [1, 0] * 32
    start = time.perf_counter()
    for _ in range(100):
        issuer.issue(labels, now_ms=NOW)
    per_row_us = (time.perf_counter() - start) / 6400 * 1e6
    assert per_row_us < 50  # about 1.5 us here; a generous bound for slow CI machines
