"""Schema inference and request validation: what is accepted, and how each rejection reads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from canaryml_server.schema import (
    MAX_PROBLEMS,
    Feature,
    FeatureKind,
    FeatureSchema,
    InvalidInput,
    Problem,
    ValidationPolicy,
    infer_schema,
    largest_magnitude,
    validate_columns,
    validate_matrix,
    validate_records,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STRICT = ValidationPolicy(allow_unknown_categories=False)
LENIENT = ValidationPolicy(allow_unknown_categories=True)


def _reference() -> pd.DataFrame:
    """float, int, bool and string columns, and a float and a string column with gaps."""
    return pd.DataFrame(
        {
            "x": [0.5, -1.25, 3.0, 2.0],
            "n": [3, 1, 7, 2],
            "flag": [True, False, True, True],
            "color": ["red", "blue", "red", "green"],
            "opt": [1.0, np.nan, 4.0, 2.5],
            "tag": ["b", None, "a", "b"],
        }
    )


@pytest.fixture(scope="module")
def mixed() -> FeatureSchema:
    return infer_schema(_reference())


@pytest.fixture(scope="module")
def numeric() -> FeatureSchema:
    """All numeric: the fast matrix path applies. `c` is nullable, `a` and `b` are not."""
    return infer_schema(
        pd.DataFrame({"a": [0.0, 1.5, -2.0], "b": [1, 2, 3], "c": [0.25, np.nan, 9.0]})
    )


def _record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "x": 1.0,
        "n": 2,
        "flag": False,
        "color": "blue",
        "opt": 3.5,
        "tag": "a",
    }
    record.update(overrides)
    return record


def _rejection(schema: FeatureSchema, payload: Any, policy: ValidationPolicy = STRICT) -> Problem:
    """The single problem a payload is rejected with."""
    with pytest.raises(InvalidInput) as caught:
        validate_records(schema, payload, policy=policy)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.status_code == 422
    return caught.value.problems[0]


# ----------------------------------------------------------------------------------------------
# infer_schema


def test_infer_schema_kinds_dtypes_ranges_categories_and_nullability(mixed: FeatureSchema) -> None:
    assert mixed.names == ["x", "n", "flag", "color", "opt", "tag"]
    assert not mixed.all_numeric

    x = mixed.feature("x")
    assert (x.kind, x.dtype, x.nullable) == (FeatureKind.NUMERIC, "float", False)
    assert (x.min, x.max) == (-1.25, 3.0)
    assert x.categories is None

    n = mixed.feature("n")
    assert (n.kind, n.dtype, n.nullable) == (FeatureKind.NUMERIC, "int", False)
    assert (n.min, n.max) == (1.0, 7.0)

    flag = mixed.feature("flag")
    assert (flag.kind, flag.dtype, flag.nullable) == (FeatureKind.CATEGORICAL, "bool", False)
    assert flag.categories == [False, True]
    assert flag.min is None and flag.max is None

    color = mixed.feature("color")
    assert (color.kind, color.dtype, color.nullable) == (FeatureKind.CATEGORICAL, "string", False)
    assert color.categories == ["blue", "green", "red"]

    opt = mixed.feature("opt")  # NaN is missing, not part of the range
    assert (opt.kind, opt.dtype, opt.nullable) == (FeatureKind.NUMERIC, "float", True)
    assert (opt.min, opt.max) == (1.0, 4.0)

    tag = mixed.feature("tag")
    assert (tag.kind, tag.dtype, tag.nullable) == (FeatureKind.CATEGORICAL, "string", True)
    assert tag.categories == ["a", "b"]

    with pytest.raises(KeyError):
        mixed.feature("nope")


def test_infer_schema_pandas_nullable_extension_dtypes() -> None:
    frame = pd.DataFrame(
        {
            "i": pd.array([4, None, -2], dtype="Int64"),
            "b": pd.array([True, None, True], dtype="boolean"),
        }
    )
    schema = infer_schema(frame)
    i, b = schema.features
    assert (i.kind, i.dtype, i.nullable, i.min, i.max) == (FeatureKind.NUMERIC, "int", True, -2, 4)
    assert (b.kind, b.dtype, b.nullable) == (FeatureKind.CATEGORICAL, "bool", True)
    assert b.categories == [True]


def test_infer_schema_all_missing_numeric_column_has_no_range() -> None:
    schema = infer_schema(pd.DataFrame({"a": [1.0, 2.0], "gap": [np.nan, np.nan]}))
    gap = schema.feature("gap")
    assert gap.nullable and gap.min is None and gap.max is None


@pytest.mark.parametrize(
    "frame",
    [pd.DataFrame(), pd.DataFrame({"a": []}), pd.DataFrame(index=range(3))],
    ids=["nothing", "no-rows", "no-columns"],
)
def test_infer_schema_refuses_empty_reference(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no rows or no columns"):
        infer_schema(frame)


def test_infer_schema_refuses_infinite_values() -> None:
    with pytest.raises(ValueError, match="'a' holds infinite values"):
        infer_schema(pd.DataFrame({"a": [1.0, np.inf]}))


def test_schema_round_trips_through_json(mixed: FeatureSchema) -> None:
    again = FeatureSchema.model_validate_json(mixed.model_dump_json())
    assert again == mixed
    assert again.feature("flag").categories == [False, True]  # still bools, not strings


def test_infer_schema_object_column_of_bools_with_gaps_is_a_bool_feature() -> None:
    schema = infer_schema(pd.DataFrame({"b": [True, None, False]}))
    b = schema.feature("b")
    assert (b.dtype, b.nullable, b.categories) == ("bool", True, [False, True])
    batch = validate_records(schema, [{"b": True}, {"b": None}], policy=STRICT)
    assert batch.columns["b"].tolist() == [True, None]


def test_cached_lookups_follow_the_features(numeric: FeatureSchema, mixed: FeatureSchema) -> None:
    assert numeric.all_numeric and not mixed.all_numeric
    assert numeric.positions == {"a": 0, "b": 1, "c": 2}
    np.testing.assert_array_equal(numeric.nullable, [False, False, True])
    assert numeric.names is numeric.names  # computed once


def test_model_copy_with_other_features_does_not_keep_stale_lookups() -> None:
    schema = infer_schema(pd.DataFrame({"a": [1.0, 2.0], "s": ["x", "y"]}))
    assert schema.names == ["a", "s"] and not schema.all_numeric  # now cached
    copy = schema.model_copy(update={"features": schema.features[:1]})
    assert copy.names == ["a"]
    assert copy.all_numeric
    assert validate_records(copy, {"a": 1.0}, policy=STRICT).rows == 1


# ----------------------------------------------------------------------------------------------
# validate_records: what is accepted


def test_one_object_is_one_row(mixed: FeatureSchema) -> None:
    batch = validate_records(mixed, _record(), policy=STRICT)
    assert batch.rows == 1
    assert list(batch.columns) == mixed.names
    assert batch.columns["x"].dtype == np.float64
    assert batch.columns["n"].tolist() == [2.0]
    assert batch.columns["flag"].tolist() == [False]
    assert batch.columns["color"].tolist() == ["blue"]


def test_a_list_of_objects_keeps_row_order(mixed: FeatureSchema) -> None:
    records = [
        _record(x=0.5, color="red"),
        _record(x=-2, n=9, flag=True, opt=None, tag=None),  # nulls in nullable features
        _record(x=7.25, color="green"),
    ]
    batch = validate_records(mixed, records, policy=STRICT)
    assert batch.rows == 3
    assert batch.columns["x"].tolist() == [0.5, -2.0, 7.25]
    assert batch.columns["n"].tolist() == [2.0, 9.0, 2.0]
    assert batch.columns["flag"].tolist() == [False, True, False]
    assert batch.columns["color"].tolist() == ["red", "blue", "green"]
    opt = batch.columns["opt"]
    assert opt[0] == 3.5 and math.isnan(opt[1]) and opt[2] == 3.5
    assert batch.columns["tag"].tolist() == ["a", None, "a"]
    frame = batch.frame()
    assert list(frame.columns) == mixed.names and len(frame) == 3


def test_keys_in_any_order_are_accepted(numeric: FeatureSchema) -> None:
    batch = validate_records(numeric, {"c": 3.0, "a": 1.0, "b": 2}, policy=STRICT)
    np.testing.assert_array_equal(batch.matrix(), [[1.0, 2.0, 3.0]])


def test_null_for_a_nullable_feature_becomes_nan(numeric: FeatureSchema) -> None:
    batch = validate_records(numeric, [{"a": 1.0, "b": 2, "c": None}], policy=STRICT)
    assert math.isnan(batch.matrix()[0, 2])
    assert math.isnan(batch.columns["c"][0])


def test_unknown_category_accepted_when_the_policy_allows_it(mixed: FeatureSchema) -> None:
    batch = validate_records(mixed, [_record(), _record(color="purple")], policy=LENIENT)
    assert batch.columns["color"].tolist() == ["blue", "purple"]


def test_batch_of_exactly_max_rows_is_accepted(numeric: FeatureSchema) -> None:
    rows = [{"a": 1.0, "b": 2, "c": 3.0}] * 5
    assert validate_records(numeric, rows, policy=ValidationPolicy(max_rows=5)).rows == 5


# ----------------------------------------------------------------------------------------------
# validate_records: each rejection names the row and the feature


def test_unknown_feature(mixed: FeatureSchema) -> None:
    problem = _rejection(mixed, [_record(), _record(colour="red")])
    assert problem.loc == (1, "colour")
    assert problem.msg == "unknown feature"
    assert problem.type == "unknown_feature"


def test_missing_feature(mixed: FeatureSchema) -> None:
    record = _record()
    del record["opt"]  # even a nullable feature must be sent (as null)
    problem = _rejection(mixed, [_record(), _record(), record])
    assert problem.loc == (2, "opt")
    assert problem.msg == "missing feature"
    assert problem.type == "missing_feature"


def test_unknown_and_missing_features_are_reported_together(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_records(numeric, {"a": 1.0, "B": 2, "c": 3.0}, policy=STRICT)
    assert [(p.loc, p.type) for p in caught.value.problems] == [
        ((0, "B"), "unknown_feature"),
        ((0, "b"), "missing_feature"),
    ]


@pytest.mark.parametrize(("schema_name", "feature"), [("numeric", "a"), ("mixed", "x")])
def test_string_where_a_number_is_expected(
    schema_name: str, feature: str, request: pytest.FixtureRequest
) -> None:
    schema: FeatureSchema = request.getfixturevalue(schema_name)
    good = {n: _record().get(n, 1.0) for n in schema.names}
    problem = _rejection(schema, [good, good, {**good, feature: "1.5"}])
    assert problem.loc == (2, feature)
    assert problem.msg == "expected a number, got str '1.5'"
    assert problem.type == "type_error"


@pytest.mark.parametrize("schema_name", ["numeric", "mixed"])
@pytest.mark.parametrize("value", [True, False])
def test_bool_where_a_number_is_expected_is_rejected(
    schema_name: str, value: bool, request: pytest.FixtureRequest
) -> None:
    schema: FeatureSchema = request.getfixturevalue(schema_name)
    good = {n: _record().get(n, 1.0) for n in schema.names}
    feature = "b" if schema_name == "numeric" else "n"
    problem = _rejection(schema, [{**good, feature: value}, good])
    assert problem.loc == (0, feature)
    assert problem.msg == f"expected a number, got bool {value!r}"
    assert problem.type == "type_error"


@pytest.mark.parametrize("schema_name", ["numeric", "mixed"])
def test_null_for_a_non_nullable_feature(schema_name: str, request: pytest.FixtureRequest) -> None:
    schema: FeatureSchema = request.getfixturevalue(schema_name)
    good = {n: _record().get(n, 1.0) for n in schema.names}
    feature = "a" if schema_name == "numeric" else "x"
    problem = _rejection(schema, [good, {**good, feature: None}])
    assert problem.loc == (1, feature)
    assert problem.type == "missing"
    assert "null" in problem.msg and "reference data had none" in problem.msg


def test_null_for_a_non_nullable_categorical(mixed: FeatureSchema) -> None:
    problem = _rejection(mixed, [_record(color=None)])
    assert problem.loc == (0, "color")
    assert problem.type == "missing"
    assert "null" in problem.msg


def test_nan_for_a_non_nullable_feature(numeric: FeatureSchema) -> None:
    problem = _rejection(numeric, [{"a": 1.0, "b": 2, "c": 3.0}, {"a": math.nan, "b": 2, "c": 3}])
    assert problem.loc == (1, "a")
    assert problem.type == "missing"
    assert "NaN" in problem.msg


def test_infinite_value(numeric: FeatureSchema) -> None:
    problem = _rejection(numeric, [{"a": 1.0, "b": 2, "c": -math.inf}])
    assert problem.loc == (0, "c")
    assert problem.msg == "infinite value"


def test_unknown_category_rejected_by_default(mixed: FeatureSchema) -> None:
    problem = _rejection(mixed, [_record(), _record(color="purple")])
    assert problem.loc == (1, "color")
    assert problem.type == "unknown_category"
    assert problem.msg == "unknown category 'purple'; known: 'blue', 'green', 'red'"


def test_unknown_category_message_lists_at_most_ten() -> None:
    schema = infer_schema(pd.DataFrame({"c": [f"k{i:02}" for i in range(12)]}))
    problem = _rejection(schema, {"c": "zz"})
    assert problem.msg.endswith("'k08', 'k09', ...")
    assert "'k10'" not in problem.msg


def test_unknown_bool_category() -> None:
    schema = infer_schema(pd.DataFrame({"only_true": [True, True]}))
    problem = _rejection(schema, [{"only_true": True}, {"only_true": False}])
    assert problem.loc == (1, "only_true")
    assert problem.type == "unknown_category"
    assert validate_records(schema, [{"only_true": False}], policy=LENIENT).rows == 1


@pytest.mark.parametrize(
    ("feature", "value", "message"),
    [
        ("color", 3, "expected a str, got int 3"),
        ("flag", "true", "expected a bool, got str 'true'"),
        ("flag", 1, "expected a bool, got int 1"),
    ],
)
def test_wrong_type_for_a_categorical(
    mixed: FeatureSchema, feature: str, value: Any, message: str
) -> None:
    problem = _rejection(mixed, [_record(**{feature: value})])
    assert problem.loc == (0, feature)
    assert problem.msg == message
    assert problem.type == "type_error"


def test_problems_in_several_features_are_all_reported(mixed: FeatureSchema) -> None:
    records = [_record(), _record(color="purple"), _record(x="oops")]
    with pytest.raises(InvalidInput) as caught:
        validate_records(mixed, records, policy=STRICT)
    assert [p.loc for p in caught.value.problems] == [(2, "x"), (1, "color")]
    text = str(caught.value)
    assert "2.x: expected a number" in text and "1.color: unknown category" in text


def test_empty_list(mixed: FeatureSchema) -> None:
    problem = _rejection(mixed, [])
    assert problem.loc == ("body",)
    assert problem.type == "empty"
    assert "empty batch" in problem.msg


def test_batch_over_max_rows_is_413(numeric: FeatureSchema) -> None:
    rows = [{"a": 1.0, "b": 2, "c": 3.0}] * 6
    with pytest.raises(InvalidInput) as caught:
        validate_records(numeric, rows, policy=ValidationPolicy(max_rows=5))
    assert caught.value.status_code == 413
    [problem] = caught.value.problems
    assert problem.loc == ("body",)
    assert problem.type == "too_large"
    assert problem.msg == "batch of 6 rows is over the limit of 5"


@pytest.mark.parametrize(
    ("row", "described"),
    [(3, "a number"), ("x", "a string"), (None, "null"), ([1, 2], "a list"), (True, "a boolean")],
)
def test_non_object_row(mixed: FeatureSchema, row: Any, described: str) -> None:
    problem = _rejection(mixed, [_record(), row])
    assert problem.loc == (1,)
    assert problem.msg == f"expected an object of features, got {described}"
    assert problem.type == "type_error"


@pytest.mark.parametrize(
    ("body", "described"),
    [("abc", "a string"), (None, "null"), (4.5, "a number"), (False, "a boolean"), ((), "tuple")],
)
def test_body_that_is_neither_a_list_nor_an_object(
    mixed: FeatureSchema, body: Any, described: str
) -> None:
    problem = _rejection(mixed, body)
    assert problem.loc == ("body",)
    assert problem.msg == f"expected a JSON object or a list of objects, got {described}"
    assert problem.type == "type_error"


@pytest.mark.parametrize("schema_name", ["numeric", "mixed"])
@pytest.mark.parametrize("big", [10**400, -(10**400)])
def test_int_too_large_for_a_float(
    schema_name: str, big: int, request: pytest.FixtureRequest
) -> None:
    schema: FeatureSchema = request.getfixturevalue(schema_name)
    good = {n: _record().get(n, 1.0) for n in schema.names}
    feature = "b" if schema_name == "numeric" else "n"
    problem = _rejection(schema, [good, good, {**good, feature: big}])
    assert problem.loc == (2, feature)
    assert problem.type == "out_of_range"
    assert problem.msg.startswith("out of range")


def test_int_too_large_names_the_row_that_overflows(numeric: FeatureSchema) -> None:
    rows = [{"a": 1.0, "b": 15 * 10**307, "c": 1.0}, {"a": 1.0, "b": 10**400, "c": 1.0}]
    problem = _rejection(numeric, rows)
    assert problem.loc == (1, "b")


def test_large_int_that_fits_a_float_is_accepted(numeric: FeatureSchema) -> None:
    batch = validate_records(numeric, {"a": 1.0, "b": 15 * 10**307, "c": 2**64}, policy=STRICT)
    np.testing.assert_array_equal(batch.matrix(), [[1.0, 1.5e308, 2.0**64]])


def test_problems_are_capped_and_serialisable(numeric: FeatureSchema) -> None:
    record: dict[str, Any] = {"a": 1.0, "b": 2, "c": 3.0}
    record.update({f"extra{i}": 0 for i in range(MAX_PROBLEMS + 5)})
    with pytest.raises(InvalidInput) as caught:
        validate_records(numeric, record, policy=STRICT)
    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS
    assert problems[0].as_dict() == {
        "loc": [0, "extra0"],
        "msg": "unknown feature",
        "type": "unknown_feature",
    }
    assert problems[0].describe() == "0.extra0: unknown feature"
    assert Problem((), "empty batch").describe() == "empty batch"


# ----------------------------------------------------------------------------------------------
# validate_records: the all-numeric fast path and the column path agree


def _column_path(schema: FeatureSchema, records: list[dict[str, Any]]) -> np.ndarray:
    columns = {n: [r[n] for r in records] for n in schema.names}
    batch = validate_columns(schema, columns, rows=len(records), policy=STRICT)
    assert batch._matrix is None  # built column by column
    return batch.matrix()


def test_fast_path_and_column_path_give_the_same_matrix(numeric: FeatureSchema) -> None:
    records = [
        {"a": 1, "b": 2, "c": None},
        {"a": -0.5, "b": 2**53 + 1, "c": 7.25},
        {"a": 1e-300, "b": -3, "c": math.nan},
    ]
    batch = validate_records(numeric, records, policy=STRICT)
    assert batch._matrix is not None  # the fast path built the matrix in one go
    assert list(batch.columns) == numeric.names
    fast = batch.matrix()
    assert fast.dtype == np.float64 and fast.shape == (3, 3)
    np.testing.assert_array_equal(fast, _column_path(numeric, records))
    np.testing.assert_array_equal(batch.columns["b"], fast[:, 1])


# Property tests here run the same 50 examples every time (no database, derandomized).
_REPEATABLE = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)


@_REPEATABLE
@given(
    st.lists(
        st.fixed_dictionaries({"a": _NUMBER, "b": _NUMBER, "c": st.one_of(st.none(), _NUMBER)}),
        min_size=1,
        max_size=20,
    )
)
def test_fast_path_matches_column_path_on_random_rows(
    numeric: FeatureSchema, records: list[dict[str, Any]]
) -> None:
    fast = validate_records(numeric, records, policy=STRICT).matrix()
    np.testing.assert_array_equal(fast, _column_path(numeric, records))


def test_fast_path_and_column_path_reject_alike(numeric: FeatureSchema) -> None:
    records = [{"a": 1.0, "b": 2, "c": None}, {"a": None, "b": 2, "c": 1.0}]
    columns = {n: [r[n] for r in records] for n in numeric.names}
    with pytest.raises(InvalidInput) as by_records:
        validate_records(numeric, records, policy=STRICT)
    with pytest.raises(InvalidInput) as by_columns:
        validate_columns(numeric, columns, rows=2, policy=STRICT)
    assert by_records.value.problems == by_columns.value.problems
    assert by_records.value.problems[0].loc == (1, "a")


# ----------------------------------------------------------------------------------------------
# validate_columns


def test_columns_with_the_wrong_length(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_columns(numeric, {"a": [1.0], "b": [1, 2], "c": [1.0, 2.0]}, rows=2, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == ("a",)
    assert problem.msg == "has 1 values for 2 rows"


def test_columns_unknown_and_missing(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_columns(numeric, {"a": [1.0], "b": [1], "z": [1]}, rows=1, policy=STRICT)
    assert [(p.loc, p.msg) for p in caught.value.problems] == [
        (("z",), "unknown feature"),
        (("c",), "missing feature"),
    ]


def test_numpy_columns_of_the_wrong_dtype(numeric: FeatureSchema) -> None:
    columns = {"a": np.array(["1"]), "b": np.array([1]), "c": np.array([1.0])}
    with pytest.raises(InvalidInput) as caught:
        validate_columns(numeric, columns, rows=1, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == ("inputs", "a")
    assert problem.msg.startswith("expected numbers, got <U")


# ----------------------------------------------------------------------------------------------
# validate_matrix: the Open Inference Protocol tensor path


def test_matrix_nested_and_flat_give_the_same_batch(numeric: FeatureSchema) -> None:
    nested = validate_matrix(numeric, [[1, 2, 3], [4.5, 5, 6]], rows=2, policy=STRICT)
    flat = validate_matrix(numeric, [1, 2, 3, 4.5, 5, 6], rows=2, policy=STRICT)
    expected = np.array([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]])
    for batch in (nested, flat):
        assert batch.rows == 2
        np.testing.assert_array_equal(batch.matrix(), expected)
        np.testing.assert_array_equal(batch.columns["b"], [2.0, 5.0])


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 5], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]])
def test_matrix_with_the_wrong_element_count(numeric: FeatureSchema, data: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, data, rows=2, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == ("inputs", 0, "data")
    assert problem.type == "shape"
    count = np.asarray(data).size
    assert problem.msg == f"holds {count} values, but shape [2, 3] needs 6"


def test_matrix_with_strings(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[1, "2", 3]], rows=1, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == (0, "b")
    assert problem.type == "type_error"
    assert problem.msg == "expected a number, got str '2'"


def test_matrix_with_null(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[1, None, 2]], rows=1, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == (0, "b")
    assert problem.type == "missing"
    # ...while null in the nullable column is a missing value
    batch = validate_matrix(numeric, [[1, 2, None]], rows=1, policy=STRICT)
    assert math.isnan(batch.matrix()[0, 2])


def test_matrix_of_bools(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[True, False, True]], rows=1, policy=STRICT)
    assert caught.value.problems[0].loc == (0, "a")
    assert caught.value.problems[0].msg == "expected a number, got bool True"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([[1, 2, 3], [4, 5]], "holds 5 values, but shape [2, 3] needs 6"),
        ([[1, 2, 3], 4, 5, 6], "not a tensor"),
        ([[[1], [2], [3]], [4, 5, 6]], "not a tensor"),
        ({"a": 1}, "expected a list"),
    ],
)
def test_matrix_ragged(numeric: FeatureSchema, data: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, data, rows=2, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == ("inputs", 0, "data")
    assert problem.msg.startswith(message)


def test_matrix_nan_in_a_non_nullable_column_names_row_and_feature(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[1, 2, 3], [4, math.nan, 6]], rows=2, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == (1, "b")
    assert problem.type == "missing"
    # ...while NaN in the nullable column is accepted
    batch = validate_matrix(numeric, [[1, 2, math.nan]], rows=1, policy=STRICT)
    assert math.isnan(batch.matrix()[0, 2])


def test_matrix_empty_and_over_the_limit(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as empty:
        validate_matrix(numeric, [], rows=0, policy=STRICT)
    assert empty.value.problems[0].type == "empty"
    with pytest.raises(InvalidInput) as large:
        validate_matrix(numeric, [0.0] * 18, rows=6, policy=ValidationPolicy(max_rows=5))
    assert large.value.status_code == 413
    assert large.value.problems[0].type == "too_large"


def test_matrix_refused_for_a_schema_with_categorical_features(mixed: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(mixed, [[1.0] * 6], rows=1, policy=STRICT)
    [problem] = caught.value.problems
    assert problem.loc == ("inputs",)
    assert problem.type == "type_error"
    assert "categorical features (flag, color, tag)" in problem.msg
    assert "send one input per feature" in problem.msg


def test_matrix_refusal_lists_at_most_five_categorical_features() -> None:
    schema = FeatureSchema(
        features=[
            Feature(name=f"c{i}", kind=FeatureKind.CATEGORICAL, dtype="string") for i in range(7)
        ]
    )
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(schema, [["a"] * 7], rows=1, policy=STRICT)
    msg = caught.value.problems[0].msg
    assert "(c0, c1, c2, c3, c4)" in msg and "c5" not in msg


def test_matrix_with_an_int_too_large_does_not_blame_null(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[1, 10**400, 3]], rows=1, policy=STRICT)
    assert "null" not in caught.value.problems[0].msg


def test_matrix_accepts_what_records_accept(numeric: FeatureSchema) -> None:
    row = {"a": 1.0, "b": 2**64, "c": 3.0}
    by_records = validate_records(numeric, row, policy=STRICT).matrix()
    by_matrix = validate_matrix(numeric, [[1.0, 2**64, 3.0]], rows=1, policy=STRICT).matrix()
    np.testing.assert_array_equal(by_matrix, by_records)


def test_matrix_rejects_a_bool_among_numbers(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput):
        validate_matrix(numeric, [[1.5, True, 3.0]], rows=1, policy=STRICT)


# ----------------------------------------------------------------------------------------------
# numbers beyond what the runtime represents


def test_largest_magnitude_is_the_edge_of_each_cast() -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        for dtype in (np.float32, np.float64):
            limit = largest_magnitude(dtype)
            beyond = np.nextafter(limit, math.inf)
            assert np.isfinite(np.array([limit, -limit]).astype(dtype)).all()
            assert not np.isfinite(np.array([beyond, -beyond]).astype(dtype)).any()
    # float32's maximum, exactly and as usually printed, is inside
    assert float(np.finfo(np.float32).max) <= largest_magnitude(np.float32)
    assert largest_magnitude(np.float32) >= 3.4028235e38
    assert largest_magnitude(np.float64) == float(np.finfo(np.float64).max)
    limit = largest_magnitude(np.int64)
    assert int(np.array([limit]).astype(np.int64)[0]) == int(limit)
    assert np.nextafter(limit, math.inf) >= 2**63  # beyond int64
    with pytest.raises(ValueError, match="not a signed number type"):
        largest_magnitude(np.str_)


FLOAT32_LIMIT = largest_magnitude(np.float32)
# `b` may take more than the others: values between the two bounds leave the fast path.
LIMITED = ValidationPolicy(max_magnitude={"a": FLOAT32_LIMIT, "b": 2.0**200, "c": FLOAT32_LIMIT})


@pytest.mark.parametrize("value", [1e308, -1e308, 3.4028236e38, 2**128])
def test_number_beyond_the_runtime_names_row_and_feature(
    numeric: FeatureSchema, value: float
) -> None:
    good = {"a": 1.0, "b": 2, "c": 3.0}
    problem = _rejection(numeric, [good, {**good, "c": value}], LIMITED)
    assert problem.loc == (1, "c")
    assert problem.type == "out_of_range"
    assert problem.msg == (
        f"out of range: this model takes numbers from -{FLOAT32_LIMIT!r} to {FLOAT32_LIMIT!r}"
    )


def test_numbers_at_the_edge_are_accepted(numeric: FeatureSchema) -> None:
    edge = float(np.finfo(np.float32).max)
    rows = [{"a": edge, "b": 2.0**200, "c": -3.4028235e38}, {"a": -edge, "b": -(2**200), "c": 0}]
    expected = [[edge, 2.0**200, -3.4028235e38], [-edge, -(2.0**200), 0.0]]
    np.testing.assert_array_equal(
        validate_records(numeric, rows, policy=LIMITED).matrix(), expected
    )
    matrix = validate_matrix(numeric, [list(r.values()) for r in rows], rows=2, policy=LIMITED)
    np.testing.assert_array_equal(matrix.matrix(), expected)


def test_each_feature_has_its_own_limit(numeric: FeatureSchema) -> None:
    # 1e39 is beyond float32 (a, c) but within b's limit
    batch = validate_records(numeric, {"a": 1.0, "b": 1e39, "c": 1.0}, policy=LIMITED)
    assert batch.matrix()[0, 1] == 1e39
    assert _rejection(numeric, {"a": 1e39, "b": 1.0, "c": 1.0}, LIMITED).loc == (0, "a")
    assert _rejection(numeric, {"a": 1.0, "b": 2.0**201, "c": 1.0}, LIMITED).loc == (0, "b")


def test_every_feature_out_of_range_is_reported(numeric: FeatureSchema) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_matrix(numeric, [[1e308, 1e308, 1e308]], rows=1, policy=LIMITED)
    assert caught.value.status_code == 422
    assert [p.loc for p in caught.value.problems] == [(0, "a"), (0, "b"), (0, "c")]
    assert {p.type for p in caught.value.problems} == {"out_of_range"}


def test_numpy_columns_out_of_range(numeric: FeatureSchema) -> None:
    columns = {"a": np.array([1.0, -1e39]), "b": np.array([1, 2]), "c": np.array([1.0, 2.0])}
    with pytest.raises(InvalidInput) as caught:
        validate_columns(numeric, columns, rows=2, policy=LIMITED)
    [problem] = caught.value.problems
    assert problem.loc == (1, "a")
    assert problem.type == "out_of_range"


def test_without_limits_any_finite_float64_is_accepted(numeric: FeatureSchema) -> None:
    batch = validate_records(numeric, {"a": 1e308, "b": -1e308, "c": 1.0}, policy=STRICT)
    np.testing.assert_array_equal(batch.matrix(), [[1e308, -1e308, 1.0]])


def _outcome(validate: Any) -> Any:
    """The problems, or the matrix with NaN written as None (NaN never equals itself)."""
    try:
        matrix = validate().matrix()
    except InvalidInput as error:
        return error.problems
    return np.where(np.isnan(matrix), None, matrix).tolist()


@_REPEATABLE
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "a": _NUMBER,
                "b": st.one_of(
                    _NUMBER,
                    st.integers(min_value=-(2**202), max_value=2**202),
                    st.floats(min_value=-1e61, max_value=1e61),
                ),
                "c": st.one_of(st.none(), _NUMBER),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_all_paths_agree_on_limits(numeric: FeatureSchema, records: list[dict[str, Any]]) -> None:
    columns = {n: [r[n] for r in records] for n in numeric.names}
    rows = [[r[n] for n in numeric.names] for r in records]
    by_columns = _outcome(
        lambda: validate_columns(numeric, columns, rows=len(records), policy=LIMITED)
    )
    assert _outcome(lambda: validate_records(numeric, records, policy=LIMITED)) == by_columns
    assert (
        _outcome(lambda: validate_matrix(numeric, rows, rows=len(records), policy=LIMITED))
        == by_columns
    )
