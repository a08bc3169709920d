"""Prediction ids: a compact signed token per predicted row, which any replica of any track of the
same ModelDeployment can verify alone, without shared storage (docs/serving.md, "Prediction ids
and feedback").

An id holds what feedback needs to be judged and counted, and nothing else (format 2):

    format (1) | position (1) | key id (4) | deployment tag (2) | track (1) | prediction time,
    ms since the epoch (6) | nonce (8) | chunk (4) | bitmap (8) | version length (1) + version
    (UTF-8) | label kind (1) + label | MAC (16 to 18)

- the key id is the first 4 bytes of sha256 of the key that signed it, so that verification
  picks that key among the current and the previous ones (key rotation);
- the deployment tag is the first 2 bytes of sha256 of the ModelDeployment's name: only there
  to tell "another deployment's id" from "tampered" in the error message. The name itself is
  covered by the MAC, so an id issued for another ModelDeployment never verifies here even when
  the tags collide;
- the nonce is 8 random bytes per request (from `os.urandom`, drawn 512 nonces at a time); the
  rows are taken in chunks of 64, the chunk is the chunk's index in the request and the
  position the row's index in its chunk (0-63). The nonce, chunk and position together are the
  identity of a prediction, for de-duplication;
- the label is the classifier's predicted label as a JSON scalar (a 1-byte length, or a 2-byte
  one for a label over 255 bytes, then the JSON text, padded with trailing spaces to the widest
  of the model's classes, which JSON ignores) or the regressor's predicted value (float64,
  big-endian); no feature value is ever in an id;
- the bitmap (64 bits, little-endian: bit i is position i) says which rows of the chunk the MAC
  vouches for: for a classifier, every row of the chunk predicted as this label; for a
  regressor, whose rows all have distinct values, the row alone;
- the MAC is HMAC-SHA256 over the ModelDeployment's name (2-byte length, then UTF-8) and every
  byte before the MAC except the position, truncated to 16, 17 or 18 bytes, whichever makes
  the whole a multiple of 3 bytes (at least 128 bits: forging one takes about 2**128 tries).
  The verifier derives the MAC's length from the content's and refuses any other length.

Why the position can be left out of the MAC: a classifier's request signs one MAC per chunk and
predicted class, not one per row (64 rows of two classes: 2 HMACs instead of 64), and the row
ids of a chunk and class differ only by their position. The verifier requires the position's
bit to be set in the signed bitmap, so changing an id's position can only give the id of
another row of the same request, chunk and predicted label: exactly the id that row was issued
(same identity, so de-duplicated with it, and the same claim, true of that row), which the
client of the request holds anyway. Claiming another label, or a row that was predicted
another label, means changing signed bytes (the label, or the bitmap): refused. Whoever holds
one id can also read from its bitmap which rows of its request's chunk got the same label (as
the answer told its client).

The whole is base64url without padding, and every id of one issuer has the same length (the
labels padded to the widest class; the classes are given up front, else found per request):
80 characters for a classifier of "breast-cancer" version "1.1.0" with classes 0 and 1. The
fields are signed, not encrypted: whoever holds an id can read its track, version, time and
predicted label (all of which its answer told them already).

Issuing a batch costs one HMAC per chunk and label present, and a few C-level passes over the
rows, not Python code per row. The position sits alone beside two bytes fixed per issuer (the
format and the key id's first byte) in the first 3-byte group, so an id's first 4 characters
depend on the position only (64 strings, computed once) and its other characters, a multiple
of 3 bytes, on the chunk and label only: each (chunk, label) template is base64-encoded once,
and a row's id is its position's 4 characters followed by its template's. The labels are
coded by `dict.fromkeys` and `map` over the rows, or, for classes 0, 1, ... (integers), read
straight from the low bytes of the label array; each label's bitmap is its rows' codes turned
into "1"s and "0"s (`bytes.translate`) read as a binary number. A single row takes plain bytes.

Measured in the model server (tests of this module time it alone): numpy, with the ids built as
one character matrix, was slower there than these passes, because between requests the caches
are cold and a numpy call costs about 3 us rather than 0.5; for the same reason the hash
states are CPython's own SHA-256 (`_hmac_states`) and the nonces are drawn in bulk.

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
import operator
import os
import struct
from binascii import b2a_base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from canaryml_api.tracks import TRACKS

try:  # CPython's own SHA-256 (3.12 on: _sha2; before: _sha256), when built with it
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
    except ImportError:
        _sha256 = hashlib.sha256

FORMAT: Final = 2
MIN_MAC_BYTES: Final = 16
MAX_MAC_BYTES: Final = 18
KEY_ID_BYTES: Final = 4
NONCE_BYTES: Final = 8
CHUNK_ROWS: Final = 64
MIN_KEY_BYTES: Final = 16
# Longer text is not an id of ours; refused before any decoding work.
MAX_ID_CHARS: Final = 1024

_LABEL_JSON: Final = 0  # a classifier's label, as a JSON scalar of at most 255 bytes
_LABEL_FLOAT: Final = 1  # a regressor's value, float64
_LABEL_LONG_JSON: Final = 2  # a classifier's label, as a JSON scalar of 256 bytes or more
# format, position, key id, deployment tag, track, time, nonce, chunk, bitmap
_HEAD = struct.Struct(">BB4s2sB6s8s4s8s")
_NONCE_AT: Final = 15  # the nonce and the chunk: token[15:27]
_CHUNK_END: Final = 27
_SHARED: Final = 22  # signed bytes a batch's ids share: format, key id, tag, track, time, nonce
_FLOAT = struct.Struct(">d")
_LENGTH = struct.Struct(">H")
_MIN_TOKEN: Final = _HEAD.size + 4 + MIN_MAC_BYTES  # an empty version, a 1-character label
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_POOLED_NONCES: Final = 512
_CACHED: Final = 10_000  # labels remembered (a classifier has few; bounded anyway)
# Per code: a byte of that code becomes "1", any other "0" (a bitmap's rows, as binary text).
_MEMBERS: Final = tuple(
    bytes.maketrans(bytes(range(256)), bytes(49 if byte == code else 48 for byte in range(256)))
    for code in range(CHUNK_ROWS)
)
_FIRST_CHUNK: Final = bytes(4)
_ONE_BIT: Final = tuple((1 << position).to_bytes(8, "little") for position in range(CHUNK_ROWS))
_ONE_ROW: Final = _FIRST_CHUNK + _ONE_BIT[0]  # a single row's chunk and bitmap

Reason = Literal["malformed", "unknown_key", "tampered", "other_deployment", "expired"]


class BadPredictionId(ValueError):  # noqa: N818 - names the situation
    """An id that does not verify, with the reason (telemetry.FEEDBACK_REJECT_REASONS)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def key_id(key: bytes) -> bytes:
    """Which key signed an id: the first bytes of its sha256 (never the key itself)."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def mac_bytes(signed: int) -> int:
    """The MAC's length after `signed` signed bytes (and the position byte): the shortest from
    16 that makes the id a multiple of 3 bytes, so that it is base64 with no padding."""
    return MIN_MAC_BYTES + (-(signed + 1 + MIN_MAC_BYTES)) % 3


def _deployment_tag(deployment: str) -> bytes:
    return hashlib.sha256(deployment.encode()).digest()[:2]


def _mac_prefix(deployment: str) -> bytes:
    name = deployment.encode()
    return _LENGTH.pack(len(name)) + name


def _b64(raw: bytes) -> bytes:
    """base64url without padding (`raw` is a multiple of 3 bytes long: there is none)."""
    return b2a_base64(raw, newline=False).translate(_URLSAFE)


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
    identity: bytes
    """Which prediction: the request's nonce, the chunk and the row's position in it (13
    bytes); the same for every spelling of the id."""
    label: Any
    """The predicted label (a JSON scalar) of a classifier, or the predicted value (a float,
    possibly NaN for a missing prediction) of a regressor."""
    regression: bool


def _json_label(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _label_field(text: bytes, width: int) -> bytes:
    """A classifier's label: its kind, length and JSON text padded with spaces to `width`."""
    padded = text.ljust(width)
    if len(padded) <= 255:
        return bytes([_LABEL_JSON, len(padded)]) + padded
    return bytes([_LABEL_LONG_JSON]) + _LENGTH.pack(len(padded)) + padded


class _Nonces:
    """Each request's 8 random bytes, drawn from os.urandom 512 nonces at a time: one system call
    per 512 requests rather than one each (in a busy server, whose caches are cold between
    requests, a getrandom call measured about 4 us, a third of a row's id). Handed out by
    `next` on an iterator, which threads cannot interleave: no nonce is handed out twice. A
    forked process forgets the parent's (`os.register_at_fork`), so that they never share
    any."""

    def __init__(self) -> None:
        self._left: Iterator[bytes] = iter(())

    def forget(self) -> None:
        self._left = iter(())

    def take(self) -> bytes:
        nonce = next(self._left, None)
        if nonce is None:
            pool = os.urandom(NONCE_BYTES * _POOLED_NONCES)
            self._left = iter([pool[at : at + NONCE_BYTES] for at in range(0, len(pool), 8)])
            nonce = next(self._left)
        return nonce


_NONCES: Final = _Nonces()
os.register_at_fork(after_in_child=_NONCES.forget)


class IdIssuer:
    """Signs the ids of one server's predictions: its deployment, track, version and key are
    fixed, so every byte but the time, the nonce, the chunk, the bitmap and the label is
    computed once, and the HMAC's keyed inner state takes the bytes a batch's ids share once per
    batch."""

    def __init__(
        self,
        key: bytes,
        *,
        deployment: str,
        track: str,
        version: str,
        regression: bool,
        classes: Sequence[Any] | None = None,
    ) -> None:
        check_keys([key])
        encoded = version.encode()
        if len(encoded) > 255:
            raise ValueError(f"model version {version[:40]!r}... is over 255 bytes")
        kid = key_id(key)
        shared = kid + _deployment_tag(deployment) + bytes([TRACKS.index(track)])
        # An id's first 3 bytes (format, position, the key id's first byte) are 4 characters
        # that depend on the position only; the rest starts with the key id's rest.
        self._first = [
            _b64(bytes([FORMAT, position, kid[0]])).decode() for position in range(CHUNK_ROWS)
        ]
        self._rest = shared[1:]  # then the time and the nonce
        self._signed = shared  # after the format, in the inner state; then time and nonce
        self._version = bytes([len(encoded)]) + encoded
        self._regression = regression
        self._inner, self._outer = _hmac_states(key, _mac_prefix(deployment) + bytes([FORMAT]))
        # The labels are padded to the widest class's JSON, so that all ids are as long.
        texts = [_json_label(c) for c in classes or []] if not regression else []
        self._width = max(map(len, texts), default=0)
        # Classes 0, 1, ... (integers): the low bytes of an integer array are its rows' codes.
        self._direct: list[bytes] | None = None
        counted = list(range(len(texts))) if 0 < len(texts) <= CHUNK_ROWS else None
        integers = classes is not None and list(map(type, classes)) == [int] * len(texts)
        if integers and list(classes or ()) == counted:
            self._direct = [self._version + _label_field(t, self._width) for t in texts]
        self._texts: dict[tuple[type, Any], bytes] = {}  # a label's JSON text, by type and value
        self._tails: dict[tuple[bytes, int], bytes] = {}  # version and label, by text and width
        self._ones: dict[
            tuple[type, Any], tuple[bytes, int]
        ] = {}  # a single row's signed bytes, by label

    def _text(self, key: tuple[type, Any]) -> bytes:
        text = self._texts.get(key)
        if text is None:
            text = _json_label(key[1])
            if len(self._texts) < _CACHED:
                self._texts[key] = text
        return text

    def _tail(self, text: bytes, width: int) -> bytes:
        tail = self._tails.get((text, width))
        if tail is None:
            tail = self._version + _label_field(text, width)
            if len(self._tails) < _CACHED:
                self._tails[(text, width)] = tail
        return tail

    def _one(self, value: Any) -> tuple[bytes, int]:
        """A single row's signed bytes after the batch's shared ones (chunk 0, the bitmap of
        position 0, the version and the label), and its MAC's length."""
        if self._regression:
            number = math.nan if value is None else float(value)
            signed = _ONE_ROW + self._version + bytes([_LABEL_FLOAT]) + _FLOAT.pack(number)
            return signed, mac_bytes(_SHARED + len(signed))
        key = (type(value), value)
        one = self._ones.get(key)
        if one is None:
            text = self._text(key)
            signed = _ONE_ROW + self._tail(text, max(self._width, len(text)))
            one = (signed, mac_bytes(_SHARED + len(signed)))
            if len(self._ones) < _CACHED:
                self._ones[key] = one
        return one

    # --- issuing --------------------------------------------------------------------------------
    # The hot paths are written out rather than split into small functions: in a server, whose
    # caches are cold between requests, each call and each distinct operation costs several
    # times what it does in a loop (a single row's id: about 10 us there, 2.5 us in a loop).

    def issue(self, labels: np.ndarray | Sequence[Any], *, now_ms: int) -> list[str]:
        """One id per predicted label (a numpy array, or Python scalars: a label or value per
        row), in the order of the rows."""
        codes = None
        if isinstance(labels, np.ndarray):
            if labels.size == 1:  # plain bytes
                return [self._single(labels.item(), now_ms)]
            if self._direct is not None and labels.size <= CHUNK_ROWS:
                codes = self._direct_codes(labels)
            # A numpy array's values are all of one Python type, but for Python objects.
            typed = labels.dtype.kind == "O"
            values = labels.reshape(-1).tolist() if codes is None else []
        else:
            typed, values = True, list(labels)
            if len(values) == 1:
                return [self._single(values[0], now_ms)]
        if codes is None and not values:
            return []
        stamp = now_ms.to_bytes(6, "big") + _NONCES.take()
        shared = self._inner.copy()
        shared.update(self._signed + stamp)
        rest = self._rest + stamp
        if codes is not None:
            return self._chunk(0, codes, self._direct or [], shared, rest)
        if self._regression:
            return self._regressor_batch(values, shared, rest)
        return self._classifier_batch(values, typed, shared, rest)

    def _single(self, value: Any, now_ms: int) -> str:
        """The id of a request's only row."""
        signed, size = self._one(value)
        stamp = now_ms.to_bytes(6, "big") + _NONCES.take()
        inner = self._inner.copy()
        inner.update(self._signed + stamp + signed)
        outer = self._outer.copy()
        outer.update(inner.digest())
        token = self._rest + stamp + signed + outer.digest()[:size]
        return self._first[0] + b2a_base64(token, newline=False).translate(_URLSAFE).decode()

    def _classifier_batch(
        self, values: list[Any], typed: bool, shared: Any, rest: bytes
    ) -> list[str]:
        """One MAC per chunk and label present in it. No numpy: a few C-level passes over the
        rows cost less than numpy's calls in a server, whose caches are cold between requests
        (about 3 us a call there)."""
        keys = list(zip(map(type, values), values, strict=True)) if typed else values
        present = list(dict.fromkeys(keys))  # the batch's labels, as they come first
        codes = list(map({key: code for code, key in enumerate(present)}.__getitem__, keys))
        texts = [self._text(key if typed else (type(key), key)) for key in present]
        width = max(self._width, *map(len, texts))  # the batch's ids are all as long
        tails = [self._tail(text, width) for text in texts]
        if len(values) <= CHUNK_ROWS:
            return self._chunk(0, codes, tails, shared, rest)
        ids: list[str] = []
        for start in range(0, len(values), CHUNK_ROWS):
            part = codes[start : start + CHUNK_ROWS]
            here = list(dict.fromkeys(part))  # the chunk's own codes, from 0
            local = list(map({code: at for at, code in enumerate(here)}.__getitem__, part))
            ids += self._chunk(start // CHUNK_ROWS, local, [tails[c] for c in here], shared, rest)
        return ids

    def _direct_codes(self, labels: np.ndarray) -> bytes | None:
        """The rows' codes of an integer array of classes 0, 1, ..., a byte each (its values'
        low bytes: no Python object per row), or None when it holds any other value."""
        if labels.dtype.kind not in "iu" or labels.dtype.str[0] == ">":
            return None
        raw = labels.tobytes()
        size = labels.itemsize
        codes = raw[::size] if size > 1 else raw
        if size > 1 and raw.count(0) != (size - 1) * len(codes) + codes.count(0):
            return None  # a value over 255, or negative
        return codes if max(codes) < len(self._direct or ()) else None

    def _chunk(
        self, chunk: int, codes: list[int] | bytes, tails: list[bytes], shared: Any, rest: bytes
    ) -> list[str]:
        """The ids of a chunk's rows, given their codes (under 64) into `tails`: one MAC per code
        present, then each row's id is its position's 4 characters and its code's template."""
        rows = bytes(codes)
        outer = self._outer
        templates = []
        for code, tail in enumerate(tails):
            # The rows with this code: "1" for each, "0" for the others, read backwards as
            # binary, so that position 0 is the lowest bit.
            bitmap = int(rows.translate(_MEMBERS[code])[::-1], 2)
            if not bitmap:  # no row has this class (given classes only): no id uses it
                templates.append("")
                continue
            signed = chunk.to_bytes(4, "big") + bitmap.to_bytes(8, "little") + tail
            inner = shared.copy()
            inner.update(signed)
            signer = outer.copy()
            signer.update(inner.digest())
            token = rest + signed + signer.digest()[: mac_bytes(_SHARED + len(signed))]
            templates.append(b2a_base64(token, newline=False).translate(_URLSAFE).decode())
        return list(map(operator.add, self._first, map(templates.__getitem__, rows)))

    def _regressor_batch(self, values: list[Any], shared: Any, rest: bytes) -> list[str]:
        """One MAC per row (all values differ): the row alone in its bitmap."""
        numbers = [math.nan if value is None else value for value in values]
        packed = struct.pack(f">{len(numbers)}d", *numbers)
        tail = self._version + bytes([_LABEL_FLOAT])
        first, sign, ones = self._first, self._sign, _ONE_BIT
        ids = []
        for row in range(len(numbers)):
            chunk, position = divmod(row, CHUNK_ROWS)
            signed = (
                chunk.to_bytes(4, "big") + ones[position] + tail + packed[row * 8 : row * 8 + 8]
            )
            ids.append(first[position] + _b64(rest + signed + sign(shared, signed)).decode())
        return ids

    def _sign(self, shared: Any, signed: bytes) -> bytes:
        """The MAC of an id whose batch's shared bytes the inner state `shared` was fed, and
        whose other signed bytes are `signed`."""
        inner = shared.copy()
        inner.update(signed)
        outer = self._outer.copy()
        outer.update(inner.digest())
        mac: bytes = outer.digest()
        return mac[: mac_bytes(_SHARED + len(signed))]


def _hmac_states(key: bytes, prefix: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's keyed inner state, fed `prefix`, and outer state (RFC 2104): HMAC(key,
    prefix + m) is outer.update(inner.update(m).digest()).digest().

    Kept as plain hash objects, copied for each MAC, because that costs less than the hmac
    module's object; and CPython's own SHA-256 rather than OpenSSL's where the interpreter has
    it: copying one is a copy of a small struct, while an OpenSSL 3 digest context's copy (and
    each digest() makes one) goes through its provider layers, which in a busy server (caches
    cold between requests) measured about 5 us per MAC against 1 us."""
    block = 64  # SHA-256's block size
    if len(key) > block:
        key = _sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = _sha256(bytes(byte ^ 0x36 for byte in key))
    inner.update(prefix)
    outer = _sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


class IdVerifier:
    """Verifies ids for one ModelDeployment: signed with the current key or a previous one, for
    this deployment, untampered, for a row the signature vouches for, and no older than
    `max_age_ms`."""

    def __init__(self, keys: Sequence[bytes], *, deployment: str, max_age_ms: int) -> None:
        check_keys(keys)
        prefix = _mac_prefix(deployment)
        self._macs = {key_id(key): _hmac_states(key, prefix) for key in keys}
        self._tag = _deployment_tag(deployment)
        self.max_age_ms = max_age_ms

    def verify(self, text: str, *, now_ms: int) -> PredictionId:
        """The id's fields, or BadPredictionId saying why not."""
        token = _decode(text)
        if len(token) < _MIN_TOKEN or token[0] != FORMAT:
            raise BadPredictionId("malformed", "not a prediction id of this format")
        _, position, kid, tag, track, time_bytes, _, _, bitmap = _HEAD.unpack_from(token)
        states = self._macs.get(kid)
        if states is None:
            raise BadPredictionId(
                "unknown_key",
                "signed with an unknown key (one rotated out, or another installation's)",
            )
        if tag != self._tag:
            raise BadPredictionId(
                "other_deployment", "issued for another model deployment (or altered)"
            )
        end = _content_end(token)
        if end is None or len(token) != end + mac_bytes(end - 1):
            raise BadPredictionId("malformed", "not a prediction id (wrong length)")
        inner, outer = states[0].copy(), states[1].copy()
        inner.update(token[:1])
        inner.update(token[2:end])
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest()[: len(token) - end], token[end:]):
            raise BadPredictionId("tampered", "the signature does not match: altered or forged")
        if position >= CHUNK_ROWS or not int.from_bytes(bitmap, "little") >> position & 1:
            raise BadPredictionId(
                "tampered", "the row is not one the signature vouches for: altered or forged"
            )
        fields = _fields(token, track, end)
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
        identity = token[_NONCE_AT:_CHUNK_END] + token[1:2]
        return PredictionId(track_name, version, predicted_at, identity, label, regression)


def _decode(text: str) -> bytes:
    if len(text) > MAX_ID_CHARS or not text.isascii():
        raise BadPredictionId("malformed", "not a prediction id (too long, or not base64url)")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadPredictionId("malformed", "not a prediction id (not base64url)") from error


def _content_end(token: bytes) -> int | None:
    """Where the MAC starts, from the version's and the label's lengths; None when they run
    past the token's end (the MAC's length is checked against it after)."""
    at = _HEAD.size
    at += 1 + token[at]
    if at >= len(token):
        return None
    kind = token[at]
    at += 1
    if kind == _LABEL_FLOAT:
        at += _FLOAT.size
    elif kind == _LABEL_JSON and at < len(token):
        at += 1 + token[at]
    elif kind == _LABEL_LONG_JSON and at + _LENGTH.size <= len(token):
        at += _LENGTH.size + _LENGTH.unpack_from(token, at)[0]
    else:
        return None
    return at if at + MIN_MAC_BYTES <= len(token) else None


def _fields(token: bytes, track: int, end: int) -> tuple[str, str, Any, bool] | None:
    """Track, version, label and whether a regressor's, from a verified token whose content
    ends at `end`; None when they do not read."""
    if track >= len(TRACKS):
        return None
    at = _HEAD.size
    length = token[at]
    at += 1
    version = token[at : at + length].decode("utf-8", "replace")
    at += length
    kind = token[at]
    at += 1
    if kind == _LABEL_FLOAT:
        return TRACKS[track], version, _FLOAT.unpack_from(token, at)[0], True
    at += 1 if kind == _LABEL_JSON else _LENGTH.size
    try:
        return TRACKS[track], version, json.loads(token[at:end]), False
    except ValueError:
        return None
