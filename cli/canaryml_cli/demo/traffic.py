"""The demo's clients: prediction requests at a steady rate through the router.

Rows come from a CSV (the bundled models' traffic rows, or `--traffic`), one JSON object per
request, each from a random user named in the sticky header. The rows go out in a shuffled
order, each once before any is sent again: the bundled 20,000 fresh draws are then an honest
sample of the reference's distribution for a whole demo (resending a few hundred rows at random
would make every drift window repeat the same pool, which a calibrated drift test rightly tells
from the reference; see example_models). When the rows come with their true labels (the CSV's
`target` column), each answered prediction's label is sent back a little later, as a team's
label pipeline would: POST /v2/models/{name}/feedback through the router, in batches, with the
prediction id the answer carried. For the drift scenario the
generator decides, with the router's own `choose_track` and the weight the router was given,
which requests the canary will answer, and moves one feature of those out of range: only the
canary's inputs drift, as when a new model meets a client that sends other units.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from canaryml_api.telemetry import TRACK_HEADER
from canaryml_router.core import RoutingTable, choose_track

from canaryml_cli.demo.processes import DemoError
from canaryml_cli.demo.record import DemoRecord

Row = dict[str, Any]
Shift = Callable[[Row], Row]

_TABLE_UPSTREAMS = {"stable": "http://stable", "canary": "http://canary"}  # names only
FEEDBACK_EVERY_S = 0.25  # how often the labels that are due are sent
FEEDBACK_BATCH = 500  # labels per feedback request at most (the servers take 1,000)


def read_rows(path: Path, *, drop: Sequence[str] = ("target",)) -> list[Row]:
    """The CSV's rows as JSON-ready objects, without label columns; DemoError says what is
    wrong with the file."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DemoError(f"cannot read traffic rows from {path}: {error}") from None
    frame = frame.drop(columns=[column for column in drop if column in frame.columns])
    if frame.empty or not len(frame.columns):
        raise DemoError(f"{path} has no rows to send")
    # NaN is not JSON: a missing value is sent as null, which the servers accept.
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(key): value for key, value in record.items()} for record in records]


def read_labels(path: Path, *, column: str = "target") -> list[Any] | None:
    """The CSV's `column`, the rows' true labels, JSON-ready (a missing one None); None when
    the file has no such column."""
    try:
        frame = pd.read_csv(path, usecols=lambda name: name == column)
    except (OSError, ValueError) as error:
        raise DemoError(f"cannot read labels from {path}: {error}") from None
    if column not in frame.columns:
        return None
    values = frame[column].astype(object)
    return values.where(values.notna(), None).tolist()


def drift_shift(rows: Sequence[Row], *, preferred: str | None = None) -> tuple[str, Shift]:
    """The feature to move (`preferred` when it is a numeric column, else the first one) and a
    function that moves it three times its observed range above its values."""
    frame = pd.DataFrame(list(rows))
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    if not numeric:
        raise DemoError("--scenario drift needs a numeric feature in the traffic rows")
    feature = preferred if preferred in numeric else numeric[0]
    low, high = float(frame[feature].min()), float(frame[feature].max())
    delta = 3.0 * max(high - low, abs(high), 1.0)

    def shift(row: Row) -> Row:
        value = row.get(feature)
        if isinstance(value, int | float) and math.isfinite(value):
            return {**row, feature: value + delta}
        return row

    return feature, shift


@dataclass
class Traffic:
    """Sends `per_second` requests to `url` until cancelled; counts answers in `record`."""

    url: str
    rows: Sequence[Row]
    per_second: float
    sticky_header: str
    weight: Callable[[], int]  # the canary weight the router has now
    record: DemoRecord
    shift: Shift | None = None  # applied to the requests the canary will answer
    labels: Sequence[Any] | None = None  # each row's true label (same order), sent back
    label_delay: float = 1.0  # seconds from an answer to its label
    seed: int = 0
    _tables: dict[int, RoutingTable] = field(default_factory=dict)
    # Labels waiting to be sent: (when due, model name, {"id": ..., "label": ...}), due in order.
    _due: deque[tuple[float, str, dict[str, Any]]] = field(default_factory=deque)

    async def run(self) -> None:
        chooser = random.Random(self.seed)
        pending: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
            feedback = asyncio.get_running_loop().create_task(self._send_labels(client))
            try:
                period = 1.0 / self.per_second
                next_at = time.monotonic()
                order: list[int] = []
                while True:
                    if not order:  # a new pass over the rows, in a new order
                        order = list(range(len(self.rows)))
                        chooser.shuffle(order)
                    index = order.pop()
                    row = self.rows[index]
                    label = self.labels[index] if self.labels is not None else None
                    user = f"user-{chooser.getrandbits(64):016x}"
                    if self.shift is not None and self._to_canary(user):
                        row = self.shift(row)
                    task = asyncio.get_running_loop().create_task(
                        self._send(client, row, user, label)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                # Requests in flight finish: a client closed under them would count as errors.
                if pending:
                    await asyncio.wait(pending, timeout=5.0)
                feedback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feedback

    def _to_canary(self, user: str) -> bool:
        weight = self.weight()
        table = self._tables.get(weight)
        if table is None:
            table = self._tables[weight] = RoutingTable(
                upstreams=_TABLE_UPSTREAMS, canary_weight=weight, sticky_header=self.sticky_header
            )
        return choose_track(table, sticky_value=user, draw=0.0) == "canary"

    async def _send(
        self, client: httpx.AsyncClient, row: Row, user: str, label: Any = None
    ) -> None:
        try:
            response = await client.post(
                f"{self.url}/predict", json=row, headers={self.sticky_header: user}
            )
        except httpx.TransportError:
            self.record.codes[0] += 1
            return
        self.record.codes[response.status_code] += 1
        track = response.headers.get(TRACK_HEADER)  # the router names who answered
        if track:
            self.record.requests[track] += 1
        if label is not None and response.status_code == 200:
            self._label_later(response, label)

    def _label_later(self, response: httpx.Response, label: Any) -> None:
        """Queue the true label of the answer's prediction (its one id), due after the delay."""
        try:
            body = response.json()
        except ValueError:
            return
        ids, model = body.get("ids"), body.get("model")
        if isinstance(ids, list) and len(ids) == 1 and isinstance(model, str):
            due = time.monotonic() + self.label_delay
            self._due.append((due, model, {"id": ids[0], "label": label}))

    async def _send_labels(self, client: httpx.AsyncClient) -> None:
        """Every FEEDBACK_EVERY_S, the labels that are due, in batches, through the router;
        each label counted in `record.labels` by the answer's status (0: no answer)."""
        while True:
            await asyncio.sleep(FEEDBACK_EVERY_S)
            now = time.monotonic()
            batches: dict[str, list[dict[str, Any]]] = {}
            while self._due and self._due[0][0] <= now:
                _, model, item = self._due.popleft()
                batches.setdefault(model, []).append(item)
            for model, items in batches.items():
                for start in range(0, len(items), FEEDBACK_BATCH):
                    batch = items[start : start + FEEDBACK_BATCH]
                    try:
                        answer = await client.post(
                            f"{self.url}/v2/models/{model}/feedback", json={"feedback": batch}
                        )
                        code = answer.status_code
                    except httpx.TransportError:
                        code = 0
                    self.record.labels[code] += len(batch)
