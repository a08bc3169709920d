"""The router's shadow comparison reads answers in the Open Inference Protocol's binary tensor
extension (a JSON header, then the outputs' raw bytes) as well as JSON ones."""

from __future__ import annotations

import struct

import orjson
import pytest
from canaryml_router.core import compare_answers, json_length, parse_answer


def binary_answer(
    labels: list[int], proba: list[float], *, proba_binary: bool = True
) -> tuple[bytes, int]:
    """An answer written here by hand: `predict` as INT64 bytes, `predict_proba` as FP32 ones
    (or as JSON data)."""
    label_bytes = struct.pack(f"<{len(labels)}q", *labels)
    proba_bytes = struct.pack(f"<{len(proba)}f", *proba)
    outputs = [
        {"name": "predict", "shape": [len(labels)], "datatype": "INT64",
         "parameters": {"binary_data_size": len(label_bytes)}},
        {"name": "predict_proba", "shape": [len(labels), 2], "datatype": "FP32",
         **({"parameters": {"binary_data_size": len(proba_bytes)}} if proba_binary
            else {"data": proba})},
    ]  # fmt: skip
    header = orjson.dumps({"model_name": "m", "outputs": outputs})
    return header + label_bytes + (proba_bytes if proba_binary else b""), len(header)


def test_a_binary_answer_is_read() -> None:
    body, length = binary_answer([1, 0], [0.25, 0.75, 0.5, 0.5])
    answer = parse_answer(body, length)
    assert answer.labels == [1, 0]
    assert answer.probabilities == [[0.25, 0.75], [0.5, 0.5]]
    assert json_length([(b"content-type", b"x"), (b"inference-header-content-length", b"12")]) == 12
    assert json_length([(b"content-type", b"application/json")]) is None
    with pytest.raises(ValueError, match="bad inference-header-content-length"):
        json_length([(b"inference-header-content-length", b"twelve")])


def test_binary_and_json_answers_compare() -> None:
    binary, length = binary_answer([1, 0], [0.25, 0.75, 0.5, 0.5])
    mixed, mixed_length = binary_answer([1, 0], [0.25, 0.75, 0.5, 0.5], proba_binary=False)
    as_json = orjson.dumps(
        {"outputs": [
            {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]},
            {"name": "predict_proba", "shape": [2, 2], "datatype": "FP32",
             "data": [0.26, 0.74, 0.5, 0.5]},
        ]}
    )  # fmt: skip
    agree = compare_answers(live=binary, shadow=as_json, tolerance=0.05, live_json_length=length)
    assert agree == "agree"
    assert (
        compare_answers(
            live=binary,
            shadow=mixed,
            tolerance=0.0,
            live_json_length=length,
            shadow_json_length=mixed_length,
        )
        == "agree"
    )
    other, other_length = binary_answer([0, 0], [0.6, 0.4, 0.5, 0.5])
    assert (
        compare_answers(
            live=binary,
            shadow=other,
            tolerance=0.05,
            live_json_length=length,
            shadow_json_length=other_length,
        )
        == "disagree"
    )
    # Bytes that do not add up, or read without the header length, cannot agree.
    cut = compare_answers(live=binary[:-1], shadow=binary, tolerance=1, live_json_length=length)
    assert cut == "error"
    assert compare_answers(live=binary, shadow=binary, tolerance=1) == "error"
