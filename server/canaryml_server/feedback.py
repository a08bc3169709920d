"""Feedback: true labels (classifiers) or values (regressors) for earlier predictions, by their
prediction ids (`prediction_ids`), judged and counted without shared storage.

No HTTP here: `receive` takes the parsed JSON body and returns what was accepted, or raises
FeedbackRefused (an InvalidInput: the client's fault, a 4xx naming each bad item). A batch is
atomic: one bad item refuses it whole, and nothing of it is counted.

Duplicates are counted once per process: the identities of the last `dedup_size` accepted ids
are remembered (a bounded LRU). A prediction's identity is its request's nonce, its chunk and
its position (`PredictionId.identity`), not the id's text, so whatever spells the same row's id
(for example one whose position was changed to another row of the same request and predicted
label, which verifies as that row's id) is one. Replicas do not share it, and a restart forgets
it: feedback for one id sent to two replicas counts twice.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from canaryml_server.prediction_ids import MAX_ID_CHARS, BadPredictionId, IdVerifier
from canaryml_server.schema import InvalidInput, Problem

# Reasons of an id that failed authentication: the batch is a 403 rather than a 422.
AUTHENTICATION: Final = frozenset({"unknown_key", "tampered", "other_deployment"})
NO_KEY_MESSAGE: Final = (
    "feedback needs CANARYML_FEEDBACK_KEY (or CANARYML_FEEDBACK_KEY_FILE): this server issues "
    "no prediction ids"
)

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class FeedbackItem(BaseModel):
    """The true outcome of one prediction: `label` (or `value`, for a regressor) for its `id`."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    label: Scalar | None = Field(
        default=None, description="The true class (classifier) or value (regressor)."
    )
    value: StrictInt | StrictFloat | None = Field(
        default=None, description="The true value of a regressor (the same as `label`)."
    )

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackItem:
        if (self.label is None) == (self.value is None):
            raise ValueError("send the true outcome as `label` (or `value`), once")
        return self

    @property
    def outcome(self) -> Any:
        return self.value if self.label is None else self.label


class FeedbackBatch(BaseModel):
    """Several outcomes at once; accepted or refused as a whole."""

    model_config = ConfigDict(extra="forbid")

    feedback: list[FeedbackItem] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Labelled:
    """One accepted outcome, as the metrics count it: under the id's track and version."""

    track: str
    version: str
    delay_seconds: float
    correct: bool | None  # classifiers
    error: float | None  # regressors: true minus predicted


@dataclass(frozen=True, slots=True)
class Receipt:
    labelled: list[Labelled]
    duplicates: int

    def as_json(self) -> dict[str, int]:
        return {"accepted": len(self.labelled), "duplicates": self.duplicates}


class FeedbackRefused(InvalidInput):
    """A refused request: its problems (one per bad item), its status, and the count of each
    reason (telemetry.FEEDBACK_REJECT_REASONS) for the rejected-feedback counter."""

    def __init__(self, problems: Sequence[Problem], *, status_code: int, reasons: Counter[str]):
        super().__init__(problems, status_code=status_code)
        self.reasons = reasons


def refused(
    reason: str, message: str, *, status_code: int, loc: tuple[str | int, ...] = ()
) -> FeedbackRefused:
    """A request refused for one reason that concerns it whole."""
    return FeedbackRefused(
        [Problem(loc or ("body",), message, reason)],
        status_code=status_code,
        reasons=Counter({reason: 1}),
    )


class Recorder(Protocol):
    """Where accepted and refused feedback is counted (the server's metrics)."""

    def labelled(self, items: Sequence[Labelled]) -> None: ...

    def rejected(self, reasons: Counter[str]) -> None: ...


class _ClassKey:
    """Compares labels as JSON does: 1 and 1.0 are one class, True and 1 are not, "1" and 1
    are not."""

    @staticmethod
    def of(value: Any) -> tuple[str, Any]:
        if isinstance(value, bool):
            return ("bool", value)
        if isinstance(value, int | float):
            return ("number", float(value))
        return (type(value).__name__, value)


class FeedbackDesk:
    """Takes feedback for one ModelDeployment: verifies ids, checks outcomes, de-duplicates."""

    def __init__(
        self,
        verifier: IdVerifier,
        *,
        regression: bool,
        classes: Sequence[Any] | None,
        max_items: int,
        dedup_size: int,
    ) -> None:
        self.verifier = verifier
        self.regression = regression
        self.classes = list(classes) if classes is not None else None
        self._class_keys = None if self.classes is None else {_ClassKey.of(c) for c in self.classes}
        self.max_items = max_items
        self.dedup_size = dedup_size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def receive(self, payload: Any, *, now_ms: int) -> Receipt:
        """Accept a body (one item, or `{"feedback": [...]}`) whole, or raise FeedbackRefused."""
        items, prefix = self._parse(payload)
        problems: list[Problem] = []
        reasons: Counter[str] = Counter()
        checked = []
        for index, item in enumerate(items):
            loc: tuple[str | int, ...] = (*prefix, index) if prefix else ()
            try:
                prediction = self.verifier.verify(item.id, now_ms=now_ms)
            except BadPredictionId as bad:
                problems.append(Problem((*loc, "id"), str(bad), bad.reason))
                reasons[bad.reason] += 1
                continue
            outcome = item.outcome
            field = "label" if item.label is not None else "value"
            wrong = self._wrong_outcome(outcome, prediction.label, prediction.regression)
            if wrong is not None:
                problems.append(Problem((*loc, field), wrong, "label"))
                reasons["label"] += 1
                continue
            checked.append((prediction, outcome))
        if problems:
            status = 403 if AUTHENTICATION & set(reasons) else 422
            raise FeedbackRefused(problems, status_code=status, reasons=reasons)
        return self._accept(checked, now_ms=now_ms)

    def _parse(self, payload: Any) -> tuple[list[FeedbackItem], tuple[str, ...]]:
        try:
            if isinstance(payload, dict) and "feedback" in payload:
                listed = payload["feedback"]
                if isinstance(listed, list) and len(listed) > self.max_items:
                    raise refused(
                        "too_many",
                        f"{len(listed)} items, over the limit of {self.max_items} per request "
                        "(CANARYML_FEEDBACK_MAX_ITEMS): send them in several requests",
                        status_code=413,
                        loc=("feedback",),
                    )
                return FeedbackBatch.model_validate(payload).feedback, ("feedback",)
            return [FeedbackItem.model_validate(payload)], ()
        except ValidationError as error:
            problems = [
                Problem(tuple(e["loc"]) or ("body",), e["msg"], e["type"])
                for e in error.errors(include_url=False)
            ]
            raise FeedbackRefused(problems, status_code=422, reasons=Counter(body=1)) from None

    def _wrong_outcome(self, outcome: Any, predicted: Any, regression: bool) -> str | None:
        """Why the true outcome does not fit the model, or None when it does."""
        if regression != self.regression:  # signed by us for a model of the other kind
            return "this id is a prediction of another kind of model than this deployment's"
        if regression:
            if isinstance(outcome, bool) or not isinstance(outcome, int | float):
                return f"expected the true value as a number, got {outcome!r}"
            if not math.isfinite(outcome):
                return "expected a finite number"
            if not math.isfinite(predicted):
                return "the prediction of this id was missing (NaN): there is no error to measure"
            return None
        if self._class_keys is not None and _ClassKey.of(outcome) not in self._class_keys:
            classes = ", ".join(repr(c) for c in (self.classes or [])[:20])
            return f"{outcome!r} is not one of the model's classes: {classes}"
        return None

    def _accept(self, checked: list[tuple[Any, Any]], *, now_ms: int) -> Receipt:
        labelled = []
        duplicates = 0
        seen = self._seen
        for prediction, outcome in checked:
            if prediction.identity in seen:
                duplicates += 1
                continue
            if self.dedup_size:
                seen[prediction.identity] = None
                if len(seen) > self.dedup_size:
                    seen.popitem(last=False)
            delay = max(0.0, (now_ms - prediction.predicted_at_ms) / 1000)
            if prediction.regression:
                error = float(outcome) - float(prediction.label)
                labelled.append(Labelled(prediction.track, prediction.version, delay, None, error))
            else:
                correct = _ClassKey.of(outcome) == _ClassKey.of(prediction.label)
                labelled.append(
                    Labelled(prediction.track, prediction.version, delay, correct, None)
                )
        return Receipt(labelled, duplicates)
