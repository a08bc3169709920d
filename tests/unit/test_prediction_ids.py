"""Prediction ids: signed, compact, verified by any replica; one MAC per request chunk and
predicted class, yet every row's id vouches for that row's label alone; tampering, positions
the signature does not cover, other keys, other deployments and old ids refused with their
reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import time
from typing import Any

import numpy as np
import pytest
from canaryml_server.prediction_ids import (
    CHUNK_ROWS,
    FORMAT,
    MAX_MAC_BYTES,
    MIN_MAC_BYTES,
    BadPredictionId,
    IdIssuer,
    IdVerifier,
    check_keys,
    key_id,
    mac_bytes,
)

KEY = b"k" * 32
NEW_KEY = b"n" * 32
DAY_MS = 86_400_000
NOW = 1_800_000_000_000
ROWS = [1, 2, 63, 64, 65, 200]
HEAD = 35  # format, position, key id, tag, track, time, nonce, chunk, bitmap
ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


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


def _mac_at(raw: bytes) -> int:
    """Where the MAC starts: after the version and the label, read from their lengths."""
    at = HEAD + 1 + raw[HEAD]
    kind, at = raw[at], at + 1
    if kind == 1:  # a float
        return at + 8
    if kind == 0:  # JSON, a 1-byte length
        return at + 1 + raw[at]
    return at + 2 + int.from_bytes(raw[at : at + 2], "big")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON tells them apart (True is not 1, 1.0 is not 1)."""
    return type(a) is type(b) and a == b


def _check_batch(ids: list[str], labels: list[Any], verifier: IdVerifier) -> None:
    """Every id verifies to its own row's label; all identities differ; one length."""
    assert len(ids) == len(labels)
    assert len({len(token) for token in ids}) == 1
    read = [verifier.verify(token, now_ms=NOW) for token in ids]
    for row, (got, label) in enumerate(zip(read, labels, strict=True)):
        assert _same(got.label, label), (row, got.label, label)
        assert got.identity[-1] == row % CHUNK_ROWS
    assert len({got.identity for got in read}) == len(ids)
    assert len({got.identity[:8] for got in read}) == 1  # one nonce per request


# --- round trips ----------------------------------------------------------------------------------


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
    assert _same(read.label, label)
    assert len(read.identity) == 8 + 4 + 1  # nonce, chunk, position


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize(
    ("classes", "dtype"),
    [
        ([0, 1], np.int64),
        ([0, 1, 2, 10, 100], np.int64),  # labels of different JSON widths
        ([-1, 1], np.int32),
        ([0.5, 1.25, 10.0], np.float64),
        ([False, True], np.bool_),
        (["a", "setosa", "ünïcode-virginica"], object),
        (["a", "setosa", "ünïcode-virginica"], np.str_),
    ],
)
@pytest.mark.parametrize("known", [True, False])
def test_classifier_batches_round_trip(
    rows: int, classes: list[Any], dtype: Any, known: bool
) -> None:
    rng = np.random.default_rng(rows)
    labels = np.array(classes, dtype=dtype)[rng.integers(0, len(classes), rows)]
    issuer = _issuer(classes=classes if known else None)
    ids = issuer.issue(labels, now_ms=NOW)
    _check_batch(ids, labels.tolist(), _verifier())
    if known:  # the labels padded to the widest class: every id of the issuer is as long
        assert {len(token) for token in issuer.issue(labels[:1], now_ms=NOW)} == {len(ids[0])}


@pytest.mark.parametrize("rows", ROWS)
def test_python_labels_keep_their_json_type(rows: int) -> None:
    values: list[Any] = [True, 1, 1.0, "1", None, "a b", 2.5, False, 0]
    labels = [values[i % len(values)] for i in range(rows)]
    _check_batch(_issuer().issue(labels, now_ms=NOW), labels, _verifier())
    # Given classes some labels are not among: still each row's own label.
    _check_batch(_issuer(classes=[0, 1]).issue(labels, now_ms=NOW), labels, _verifier())


@pytest.mark.parametrize("rows", [2, 64, 65])
def test_labels_outside_the_given_classes_and_many_classes(rows: int) -> None:
    issuer = _issuer(classes=[0, 1])
    labels = np.arange(rows, dtype=np.int64) % 5  # 2, 3, 4 are no class of the manifest
    _check_batch(issuer.issue(labels, now_ms=NOW), labels.tolist(), _verifier())
    many = list(range(1000))
    labels = np.array([3, 999, 3, 500] * 20, dtype=np.int64)[:rows]
    _check_batch(_issuer(classes=many).issue(labels, now_ms=NOW), labels.tolist(), _verifier())


@pytest.mark.parametrize("dtype", ["<i8", ">i8", "i1", "u1", "<u2", ">i4", "i4"])
@pytest.mark.parametrize("rows", [2, 63, 64, 65])
def test_integer_classes_read_from_the_arrays_bytes(dtype: str, rows: int) -> None:
    """Classes 0, 1, ...: the codes are the values' low bytes, whatever the integer type and
    byte order; values that are no class (negative, over the last, over 255) are still each
    row's own."""
    issuer = _issuer(classes=[0, 1, 2])
    for values in ([0, 1, 2, 2, 1], [0, 0], [2, 2, 2], [1, -1, 0], [0, 3, 1], [1, 256, 2]):
        unsigned, one_byte = dtype[-2] == "u", dtype in ("i1", "u1")
        if (min(values) < 0 and unsigned) or (max(values) > 127 and one_byte):
            continue
        labels = np.array([values[i % len(values)] for i in range(rows)], dtype=dtype)
        ids = issuer.issue(labels, now_ms=NOW)
        _check_batch(ids, labels.tolist(), _verifier())
        if set(values) <= {0, 1, 2}:  # the classes' ids are all as long
            assert {len(token) for token in ids} == {80}, values


def test_nonces_differ_across_requests_pools_and_forked_processes() -> None:
    issuer = _issuer(classes=[0, 1])
    verifier = _verifier()
    nonces = set()
    for _ in range(1100):  # over two pools of 512
        [token] = issuer.issue(np.array([1]), now_ms=NOW)
        nonces.add(verifier.verify(token, now_ms=NOW).identity[:8])
    assert len(nonces) == 1100
    # A forked child draws its own nonces, not the rest of its parent's pool.
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writing, _raw(issuer.issue(np.array([1]), now_ms=NOW)[0]))
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(reading, 1024)
    os.close(reading)
    os.close(writing)
    ours = _raw(issuer.issue(np.array([1]), now_ms=NOW)[0])
    assert theirs[15:23] != ours[15:23]


@pytest.mark.parametrize("rows", ROWS)
def test_regressor_batches_round_trip(rows: int) -> None:
    values = np.random.default_rng(rows).normal(100, 50, rows)
    values[rows // 2] = math.nan
    ids = _issuer(regression=True, track="stable").issue(values, now_ms=NOW)
    read = [_verifier().verify(token, now_ms=NOW) for token in ids]
    assert all(r.regression and r.track == "stable" for r in read)
    for got, value in zip(read, values.tolist(), strict=True):
        assert got.label == value or (math.isnan(got.label) and math.isnan(value))
    assert len({r.identity for r in read}) == rows
    assert len({len(token) for token in ids}) == 1
    # Each row's MAC covers it alone: no other position verifies.
    raw = _raw(ids[0])
    for position in range(1, CHUNK_ROWS):
        moved = raw[:1] + bytes([position]) + raw[2:]
        with pytest.raises(BadPredictionId):
            _verifier().verify(_encode(moved), now_ms=NOW)


@pytest.mark.parametrize("value", [151.25, -0.0, 1e300, math.nan, None])
def test_a_regressor_id_round_trips(value: float | None) -> None:
    [token] = _issuer(regression=True, track="stable").issue([value], now_ms=NOW)
    read = _verifier().verify(token, now_ms=NOW)
    assert read.regression and read.track == "stable"
    if value is None or math.isnan(value):
        assert math.isnan(read.label)
    else:
        assert read.label == value and math.copysign(1, read.label) == math.copysign(1, value)


def test_no_ids_for_no_rows() -> None:
    assert _issuer().issue(np.array([], dtype=np.int64), now_ms=NOW) == []
    assert _issuer(regression=True).issue([], now_ms=NOW) == []


# --- layout -----------------------------------------------------------------------------------


def test_ids_are_compact_of_one_length_and_without_padding() -> None:
    issuer = _issuer(classes=[0, 1])
    ids = issuer.issue(np.array([1, 0] * 32), now_ms=NOW)
    # 80 characters for "breast-cancer" 1.1.0 with classes 0 and 1 (docs/serving.md).
    assert {len(token) for token in ids} == {80}
    assert len(issuer.issue(np.array([1]), now_ms=NOW)[0]) == 80
    assert all(set(token) <= ALPHABET for token in ids)
    # String classes: padded to the widest, so every id is as long whichever label it has.
    strings = _issuer(classes=["a", "versicolor"]).issue(["a", "versicolor", "a"], now_ms=NOW)
    assert len({len(token) for token in strings}) == 1
    for token in ids + strings:
        assert len(_raw(token)) % 3 == 0 and len(token) % 4 == 0


def test_the_mac_is_hmac_sha256_over_the_deployment_and_the_fields_but_the_position() -> None:
    for key in (KEY, b"x" * 100):  # a key longer than SHA-256's block is hashed first
        for rows in (1, 3):
            ids = _issuer(key, classes=[0, 1]).issue(np.array([1, 0, 1][:rows]), now_ms=NOW)
            raw = _raw(ids[0])
            assert raw[0] == FORMAT and raw[1] == 0 and raw[2:6] == key_id(key)
            end = _mac_at(raw)
            mac_length = len(raw) - end
            assert mac_length == mac_bytes(end - 1)
            name = b"breast-cancer"
            covered = raw[:1] + raw[2:end]
            message = len(name).to_bytes(2, "big") + name + covered
            expected = hmac.new(key, message, hashlib.sha256).digest()[:mac_length]
            assert raw[-mac_length:] == expected
            # The bitmap: the rows of the chunk predicted as this one's label.
            bitmap = int.from_bytes(raw[27:35], "little")
            assert bitmap == (0b101 if rows == 3 else 0b1)


def test_mac_lengths_make_a_multiple_of_3() -> None:
    for signed in range(40, 200):
        size = mac_bytes(signed)
        assert MIN_MAC_BYTES <= size <= MAX_MAC_BYTES
        assert (signed + 1 + size) % 3 == 0


# --- refusals ---------------------------------------------------------------------------------


def test_every_altered_byte_is_refused() -> None:
    verifier = _verifier()
    for labels in (["setosa"], ["setosa", "virginica", "setosa"]):
        ids = _issuer().issue(labels, now_ms=NOW)
        own = {token: verifier.verify(token, now_ms=NOW) for token in ids}
        raw = _raw(ids[0])
        for position in range(len(raw)):
            for flip in (0x01, 0x02, 0x80):
                altered = bytearray(raw)
                altered[position] ^= flip
                if position == 1 and altered[1] < len(labels) and labels[altered[1]] == labels[0]:
                    # Another row of the same request and label: that row's own id.
                    read = verifier.verify(_encode(bytes(altered)), now_ms=NOW)
                    assert read == own[ids[altered[1]]]
                    continue
                with pytest.raises(BadPredictionId) as refused:
                    verifier.verify(_encode(bytes(altered)), now_ms=NOW)
                assert refused.value.reason in {"malformed", "unknown_key", "other_deployment",
                                                "tampered"}  # fmt: skip
    # A changed label (the likeliest forgery: "my prediction was right") is a bad signature.
    [token] = _issuer().issue(["virginica"], now_ms=NOW)
    [other] = _issuer().issue(["setosa"], now_ms=NOW)
    forged = _raw(other)[:-MIN_MAC_BYTES] + _raw(token)[-MIN_MAC_BYTES:]
    with pytest.raises(BadPredictionId, match="signature") as refused:
        verifier.verify(_encode(forged), now_ms=NOW)
    assert refused.value.reason == "tampered"
    # Truncated or extended.
    for text in (token[:-4], token + "AAAA", token[:20], token[:-1], token + "A"):
        with pytest.raises(BadPredictionId):
            verifier.verify(text, now_ms=NOW)


@pytest.mark.parametrize("rows", [3, 64, 65, 200])
def test_a_position_outside_the_signed_bitmap_is_refused(rows: int) -> None:
    """An id of a row predicted A, moved to a row predicted B (or to no row): refused."""
    labels = np.array([0, 1] * (rows // 2) + [0] * (rows % 2), dtype=np.int64)
    ids = _issuer(classes=[0, 1]).issue(labels, now_ms=NOW)
    verifier = _verifier()
    raw = _raw(ids[0])  # row 0, predicted 0; row 1 was predicted 1
    for position in (1, 3, 63, 64, 255):
        forged = raw[:1] + bytes([position]) + raw[2:]
        with pytest.raises(BadPredictionId, match="vouches") as refused:
            verifier.verify(_encode(forged), now_ms=NOW)
        assert refused.value.reason == "tampered"
    # Moved to another row predicted 0 in its chunk: that row's own id (same identity).
    moved = verifier.verify(_encode(raw[:1] + bytes([2]) + raw[2:]), now_ms=NOW)
    assert moved == verifier.verify(ids[2], now_ms=NOW)
    # A row of the second chunk keeps its own chunk: moving it never reaches the first's.
    if rows > CHUNK_ROWS:
        second = _raw(ids[CHUNK_ROWS])
        assert verifier.verify(ids[CHUNK_ROWS], now_ms=NOW).identity[8:12] == bytes([0, 0, 0, 1])
        forged = second[:1] + bytes([1]) + second[2:]
        with pytest.raises(BadPredictionId, match="vouches"):
            verifier.verify(_encode(forged), now_ms=NOW)


def test_a_wrong_mac_length_is_refused() -> None:
    [token] = _issuer(classes=[0, 1]).issue(np.array([1]), now_ms=NOW)
    raw = _raw(token)
    verifier = _verifier()
    content = raw[: _mac_at(raw)]
    size = len(raw) - len(content)
    mac = hmac.new(KEY, b"\0\x0dbreast-cancer" + content[:1] + content[2:], hashlib.sha256)
    for other in (size - 3, size - 1, size + 1, size + 3, 32):
        forged = content + mac.digest()[:other]
        with pytest.raises(BadPredictionId, match="wrong length") as refused:
            verifier.verify(_encode(forged), now_ms=NOW)
        assert refused.value.reason == "malformed"
    # The right length with the same MAC computation: accepted (the refusals above were the
    # length alone).
    assert verifier.verify(_encode(content + mac.digest()[:size]), now_ms=NOW).label == 1


@pytest.mark.parametrize("text", ["", "!!!!", "a b", "é" * 10, "A" * 2000, "AQ", "YWJj"])
def test_garbage_is_malformed(text: str) -> None:
    with pytest.raises(BadPredictionId) as refused:
        _verifier().verify(text, now_ms=NOW)
    assert refused.value.reason == "malformed"


def test_format_1_is_no_longer_read() -> None:
    [token] = _issuer().issue([1], now_ms=NOW)
    raw = bytearray(_raw(token))
    raw[0] = 1
    with pytest.raises(BadPredictionId, match="format") as refused:
        _verifier().verify(_encode(bytes(raw)), now_ms=NOW)
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
    ids = _issuer(classes=[0, 1]).issue(np.array([1, 0, 1]), now_ms=NOW)
    verifier = _verifier(days=7)
    for token in ids:
        assert verifier.verify(token, now_ms=NOW + 7 * DAY_MS).predicted_at_ms == NOW
        with pytest.raises(BadPredictionId, match="over the allowed") as refused:
            verifier.verify(token, now_ms=NOW + 7 * DAY_MS + 1)
        assert refused.value.reason == "expired"


def test_rotation_new_key_signs_old_keys_verify_until_dropped() -> None:
    old = _issuer(KEY, classes=[0, 1]).issue(np.array([1, 0]), now_ms=NOW)
    new = _issuer(NEW_KEY, classes=[0, 1]).issue(np.array([0, 1]), now_ms=NOW)
    rotating = _verifier(NEW_KEY, KEY)
    assert [rotating.verify(token, now_ms=NOW).label for token in old] == [1, 0]
    assert [rotating.verify(token, now_ms=NOW).label for token in new] == [0, 1]
    for token in old:
        with pytest.raises(BadPredictionId) as refused:
            _verifier(NEW_KEY).verify(token, now_ms=NOW)
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
    issuer = _issuer(classes=[0, 1])
    labels = np.array([1, 0] * 32)
    issuer.issue(labels, now_ms=NOW)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            issuer.issue(labels, now_ms=NOW)
        best = min(best, (time.perf_counter() - start) / 100 * 1e6)
    assert best < 200  # about 12 us per 64 rows here; a generous bound for slow CI machines
