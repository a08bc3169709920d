"""Prediction ids: a compact signed token per predicted row, which any replica of any track of the
same ModelDeployment can verify alone, without shared storage (docs/serving.md, "Prediction ids
and feedback").

An id holds what feedback needs to be judged and counted, and nothing else:

    format (1 byte) | key id (4) | deployment tag (2) | track (1) | prediction time, ms since
    the epoch (6) | nonce (8) | version length (1) + version (UTF-8) | label kind (1) + label
    | MAC (16)

- the key id is the first 4 bytes of sha256 of the key that signed it, so that verification
  picks that key among the current and the previous ones (key rotation);
- the deployment tag is the first 2 bytes of sha256 of the ModelDeployment's name: only there
  to tell "another deployment's id" from "tampered" in the error message. The name itself is
  covered by the MAC, so an id issued for another ModelDeployment never verifies here even when
  the tags collide;
- the nonce is 8 random bytes per row: the identity of a prediction for de-duplication;
- the label is the classifier's predicted label as a JSON scalar (2-byte length, then the JSON
  text) or the regressor's predicted value (float64, big-endian); no feature value is ever in
  an id;
- the MAC is HMAC-SHA256 over the ModelDeployment's name and every byte before it, truncated
  to 16 bytes (128 bits: forging one takes about 2**128 tries).

The whole is base64url without padding: 64 characters for a classifier of
"breast-cancer" version "1.1.0". The fields are signed, not encrypted: whoever holds an id can
read its track, version, time and predicted label (all of which its answer told them already).

The standard library's `hmac` and `hashlib` are used rather than a token library (JWT, Fernet,
itsdangerous): this is a keyed MAC over a few fixed fields, and a library would only add
encodings (JSON headers, algorithm negotiation) that make ids longer and verification slower,
and a dependency to keep up to date. No HTTP here: the server's handlers call it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from canaryml_api.tracks import TRACKS

FORMAT: Final = 1
MAC_BYTES: Final = 16
KEY_ID_BYTES: Final = 4
NONCE_BYTES: Final = 8
MIN_KEY_BYTES: Final = 16
# Longer text is not an id of ours; refused before any decoding work.
MAX_ID_CHARS: Final = 1024

_LABEL_JSON: Final = 0  # a classifier's label, as a JSON scalar
_LABEL_FLOAT: Final = 1  # a regressor's value, float64
_HEAD = struct.Struct(">B4s2sB6s8s")  # format, key id, deployment tag, track, time, nonce
_FLOAT = struct.Struct(">d")
_LENGTH = struct.Struct(">H")
_FIXED = _HEAD.size + 1 + 1 + MAC_BYTES  # head, version length, label kind, MAC
_URLSAFE = bytes.maketrans(b"+/", b"-_")

Reason = Literal["malformed", "unknown_key", "tampered", "other_deployment", "expired"]


class BadPredictionId(ValueError):  # noqa: N818 - names the situation
    """An id that does not verify, with the reason (telemetry.FEEDBACK_REJECT_REASONS)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def key_id(key: bytes) -> bytes:
    """Which key signed an id: the first bytes of its sha256 (never the key itself)."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def _deployment_tag(deployment: str) -> bytes:
    return hashlib.sha256(deployment.encode()).digest()[:2]


def _mac_prefix(deployment: str) -> bytes:
    name = deployment.encode()
    return _LENGTH.pack(len(name)) + name


def check_keys(keys: Sequence[bytes]) -> None:
    """Raise ValueError unless the keys are long enough and tell apart by their key ids."""
    if not keys:
        raise ValueError("no feedback key")
    for index, key in enumerate(keys):
        if len(key) < MIN_KEY_BYTES:
            which = "the feedback key" if index == 0 else f"previous feedback key {index}"
            raise ValueError(
                f"{which} has {len(key)} bytes; use at least {MIN_KEY_BYTES} (32 random bytes, "
                "for example `openssl rand -base64 32`)"
            )
    ids = [key_id(key) for key in keys]
    if len(set(ids)) != len(ids):
        raise ValueError("two feedback keys are the same (or share a key id): drop one")


@dataclass(frozen=True, slots=True)
class PredictionId:
    """What a verified id says."""

    track: str
    version: str
    predicted_at_ms: int
    nonce: bytes
    label: Any
    """The predicted label (a JSON scalar) of a classifier, or the predicted value (a float,
    possibly NaN for a missing prediction) of a regressor."""
    regression: bool


class IdIssuer:
    """Signs the ids of one server's predictions: its deployment, track and version are fixed,
    so everything but the time, the nonce and the label is computed once, and the HMAC's keyed
    inner state takes the bytes a batch's ids share once per batch."""

    def __init__(
        self, key: bytes, *, deployment: str, track: str, version: str, regression: bool
    ) -> None:
        check_keys([key])
        encoded = version.encode()
        if len(encoded) > 255:
            raise ValueError(f"model version {version[:40]!r}... is over 255 bytes")
        self._head = struct.pack(
            ">B4s2sB", FORMAT, key_id(key), _deployment_tag(deployment), TRACKS.index(track)
        )
        self._version = bytes([len(encoded)]) + encoded
        self._regression = regression
        self._inner, self._outer = _hmac_states(key)
        self._inner.update(_mac_prefix(deployment))
        self._labels: dict[tuple[type, Any], bytes] = {}

    def _label(self, value: Any) -> bytes:
        if self._regression:
            number = math.nan if value is None else float(value)
            return bytes([_LABEL_FLOAT]) + _FLOAT.pack(number)
        cached = self._labels.get((type(value), value))
        if cached is not None:
            return cached
        text = json.dumps(value, separators=(",", ":")).encode()
        encoded = bytes([_LABEL_JSON]) + _LENGTH.pack(len(text)) + text
        if len(self._labels) < 10_000:  # a classifier has few labels; bounded anyway
            self._labels[(type(value), value)] = encoded
        return encoded

    def issue(self, labels: Sequence[Any], *, now_ms: int) -> list[str]:
        """One id per predicted label (Python scalars: a label or value per row)."""
        nonces = os.urandom(NONCE_BYTES * len(labels))
        head = self._head + now_ms.to_bytes(6, "big")
        shared = self._inner.copy()
        shared.update(head)
        outer, version, label_of = self._outer, self._version, self._label
        encode, alphabet = binascii.b2a_base64, _URLSAFE
        ids = []
        for row, label in enumerate(labels):
            rest = nonces[row * NONCE_BYTES : (row + 1) * NONCE_BYTES] + version + label_of(label)
            inner = shared.copy()
            inner.update(rest)
            signer = outer.copy()
            signer.update(inner.digest())
            token = head + rest + signer.digest()[:MAC_BYTES]
            ids.append(encode(token, newline=False).translate(alphabet).rstrip(b"=").decode())
        return ids


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's keyed inner and outer hash states (RFC 2104): HMAC(key, m) is
    outer.update(inner.update(m).digest()).digest(). Kept as plain sha256 objects because
    copying and feeding them costs less than the hmac module's object per id."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


class IdVerifier:
    """Verifies ids for one ModelDeployment: signed with the current key or a previous one, for
    this deployment, untampered, and no older than `max_age_ms`."""

    def __init__(self, keys: Sequence[bytes], *, deployment: str, max_age_ms: int) -> None:
        check_keys(keys)
        prefix = _mac_prefix(deployment)
        self._macs = {key_id(key): hmac.new(key, prefix, hashlib.sha256) for key in keys}
        self._tag = _deployment_tag(deployment)
        self.max_age_ms = max_age_ms

    def verify(self, text: str, *, now_ms: int) -> PredictionId:
        """The id's fields, or BadPredictionId saying why not."""
        token = _decode(text)
        if len(token) < _FIXED or token[0] != FORMAT:
            raise BadPredictionId("malformed", "not a prediction id of this format")
        _, kid, tag, track, time_bytes, nonce = _HEAD.unpack_from(token)
        mac = self._macs.get(kid)
        if mac is None:
            raise BadPredictionId(
                "unknown_key",
                "signed with an unknown key (one rotated out, or another installation's)",
            )
        if tag != self._tag:
            raise BadPredictionId(
                "other_deployment", "issued for another model deployment (or altered)"
            )
        signer = mac.copy()
        signer.update(token[:-MAC_BYTES])
        if not hmac.compare_digest(signer.digest()[:MAC_BYTES], token[-MAC_BYTES:]):
            raise BadPredictionId("tampered", "the signature does not match: altered or forged")
        fields = _fields(token, track)
        if fields is None:  # signed by us, yet unreadable: a format this server does not know
            raise BadPredictionId("malformed", "not a prediction id of this format")
        predicted_at = int.from_bytes(time_bytes, "big")
        age = now_ms - predicted_at
        if age > self.max_age_ms:
            raise BadPredictionId(
                "expired",
                f"the prediction is {age / 1000:.0f} s old, over the allowed "
                f"{self.max_age_ms / 1000:.0f} s (CANARYML_FEEDBACK_MAX_AGE)",
            )
        track_name, version, label, regression = fields
        return PredictionId(track_name, version, predicted_at, nonce, label, regression)


def _decode(text: str) -> bytes:
    if len(text) > MAX_ID_CHARS or not text.isascii():
        raise BadPredictionId("malformed", "not a prediction id (too long, or not base64url)")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadPredictionId("malformed", "not a prediction id (not base64url)") from error


def _fields(token: bytes, track: int) -> tuple[str, str, Any, bool] | None:
    """Track, version, label and whether a regressor's, from a verified token; None when the
    layout does not add up."""
    end = len(token) - MAC_BYTES
    at = _HEAD.size
    if track >= len(TRACKS):
        return None
    length = token[at]
    at += 1
    version = token[at : at + length].decode("utf-8", "replace")
    at += length
    if at >= end:
        return None
    kind = token[at]
    at += 1
    if kind == _LABEL_FLOAT and end - at == _FLOAT.size:
        return TRACKS[track], version, _FLOAT.unpack_from(token, at)[0], True
    if kind == _LABEL_JSON and end - at >= _LENGTH.size:
        (size,) = _LENGTH.unpack_from(token, at)
        at += _LENGTH.size
        if end - at != size:
            return None
        try:
            return TRACKS[track], version, json.loads(token[at:end]), False
        except ValueError:
            return None
    return None
