"""Prediction ids and feedback over HTTP: the model server through httpx's ASGI transport, and
the router in front of two such servers (stable and canary) and a shadow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import pandas as pd
import pytest
from canaryml_api.telemetry import (
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_DELAY,
    FEEDBACK_LABELS_TOTAL,
    FEEDBACK_REJECTED_TOTAL,
    PREDICTION_IDS_HEADER,
    REQUESTS_TOTAL,
)
from canaryml_router.app import create_router_app
from canaryml_router.core import RoutingTable
from canaryml_server.app import create_app
from canaryml_server.artifact import LoadedModel, load_artifact
from canaryml_server.settings import ServerSettings
from canaryml_testing.cluster import eventually
from prometheus_client.parser import text_string_to_metric_families

from tests.component.test_router import _client as router_client
from tests.component.test_router import upstream

MODEL = "breast-cancer"
KEY = "feedback-key-for-the-tests-0123456789"
FEEDBACK = f"/v2/models/{MODEL}/feedback"


def _app(model: LoadedModel, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "model_uri": "unused",
        "model_deployment": "bc",
        "track": "canary",
        "feedback_key": KEY,
    }
    values.update(overrides)
    return create_app(model=model, settings=ServerSettings(**values))


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture(scope="module")
def canary(example_models: dict[str, Path]) -> LoadedModel:
    return load_artifact(example_models["canary"])


@pytest.fixture
async def client(canary: LoadedModel) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(_app(canary)) as c:
        yield c


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return rows.to_dict(orient="records")  # type: ignore[return-value]


def _value(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_every_prediction_carries_ids_in_the_body_and_a_header(
    client: httpx.AsyncClient, test_rows: pd.DataFrame
) -> None:
    one = await client.post("/predict", json=_records(test_rows.iloc[:1])[0])
    [only] = one.json()["ids"]
    assert one.headers[PREDICTION_IDS_HEADER] == only
    many = await client.post("/predict", json=_records(test_rows.iloc[:5]))
    ids = many.json()["ids"]
    assert len(ids) == 5 == len(set(ids))
    assert many.headers[PREDICTION_IDS_HEADER].split(",") == ids
    tensor = {
        "id": "req-1",
        "inputs": [
            {"name": "input-0", "shape": [3, 30], "datatype": "FP64",
             "data": test_rows.iloc[:3].to_numpy().ravel().tolist()}
        ],
    }  # fmt: skip
    infer = await client.post(f"/v2/models/{MODEL}/infer", json=tensor)
    body = infer.json()
    assert body["id"] == "req-1"  # the request's id is echoed as before
    ids = body["parameters"]["prediction_ids"]
    assert len(ids) == 3
    assert infer.headers[PREDICTION_IDS_HEADER] == ",".join(ids)
    # Up to 50 ids of 80 characters fit the header's 4 KiB; 64 do not: the body alone has them.
    fits = await client.post("/predict", json=_records(test_rows.iloc[:50]))
    assert fits.headers[PREDICTION_IDS_HEADER].split(",") == fits.json()["ids"]
    assert {len(token) for token in fits.json()["ids"]} == {80}
    for rows in (64, 80):
        big = await client.post("/predict", json=_records(test_rows.iloc[:rows]))
        assert len(big.json()["ids"]) == rows
        assert PREDICTION_IDS_HEADER not in big.headers


async def test_feedback_is_counted_under_the_ids_track_by_any_replica(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    async with (
        _client(_app(canary, track="canary")) as canary_server,
        _client(_app(canary, track="stable", model_version="1.0.0")) as stable_server,
    ):
        answer = (await canary_server.post("/predict", json=_records(test_rows.iloc[:4]))).json()
        ids, predicted = answer["ids"], answer["predictions"]
        # The stable server takes the canary's feedback, and counts it as the canary's.
        items = [
            {"id": ids[0], "label": predicted[0]},
            {"id": ids[1], "label": 1 - predicted[1]},
            {"id": ids[2], "label": predicted[2]},
        ]
        taken = await stable_server.post(FEEDBACK, json={"feedback": items})
        assert taken.status_code == 200, taken.text
        assert taken.json() == {"accepted": 3, "duplicates": 0}
        single = await stable_server.post(FEEDBACK, json={"id": ids[3], "label": predicted[3]})
        assert single.json() == {"accepted": 1, "duplicates": 0}
        again = await stable_server.post(FEEDBACK, json={"id": ids[3], "label": predicted[3]})
        assert again.json() == {"accepted": 0, "duplicates": 1}
        metrics = (await stable_server.get("/metrics")).text
        labels = {"model_deployment": "bc", "track": "canary", "version": "1.1.0"}
        assert _value(metrics, FEEDBACK_LABELS_TOTAL, **labels) == 4
        assert _value(metrics, FEEDBACK_CORRECT_TOTAL, **labels) == 3
        assert _value(metrics, f"{FEEDBACK_DELAY}_count", **labels) == 4
        assert _value(metrics, FEEDBACK_LABELS_TOTAL, track="stable", version="1.0.0") == 0
        # Feedback is not a prediction request.
        assert _value(metrics, REQUESTS_TOTAL) == 0


async def test_bad_feedback_over_http(
    client: httpx.AsyncClient, canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    [token] = (await client.post("/predict", json=_records(test_rows.iloc[:1]))).json()["ids"]
    cases: list[tuple[Any, int, str]] = [
        ({"id": token, "label": "malignant"}, 422, "not one of the model's classes: 0, 1"),
        ({"id": token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "label": 1}, 403,
         "signature"),
        ({"id": "x", "label": 1}, 422, "not a prediction id"),
        ({"feedback": [{"id": token, "label": 1}] * 1001}, 413, "over the limit of 1000"),
    ]  # fmt: skip
    for body, status, message in cases:
        response = await client.post(FEEDBACK, json=body)
        assert response.status_code == status, response.text
        assert message in response.text
        assert response.json()["detail"][0]["loc"]
    not_json = await client.post(
        FEEDBACK, content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    wrong_type = await client.post(FEEDBACK, content=b"{}", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert (await client.post("/v2/models/other/feedback", json={})).status_code == 404
    async with _client(_app(canary, max_body_bytes=1024, body_budget_bytes=4096)) as small:
        too_large = await small.post(FEEDBACK, json={"id": "A" * 2000, "label": 1})
        assert too_large.status_code == 413
        assert "over the limit of 1024 bytes" in too_large.text
    metrics = (await client.get("/metrics")).text
    own = {"track": "canary", "version": "1.1.0"}
    assert _value(metrics, FEEDBACK_REJECTED_TOTAL, reason="label", **own) == 1
    assert _value(metrics, FEEDBACK_REJECTED_TOTAL, reason="tampered", **own) == 1
    assert _value(metrics, FEEDBACK_REJECTED_TOTAL, reason="too_many", **own) == 1
    assert _value(metrics, FEEDBACK_REJECTED_TOTAL, reason="body", **own) == 2
    assert _value(metrics, FEEDBACK_LABELS_TOTAL) == 0


async def test_without_a_key_no_ids_and_feedback_says_what_it_needs(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    async with _client(_app(canary, feedback_key=None)) as plain:
        answer = await plain.post("/predict", json=_records(test_rows.iloc[:2]))
        assert "ids" not in answer.json()
        assert PREDICTION_IDS_HEADER not in answer.headers
        tensor = {
            "inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                        "data": test_rows.iloc[0].tolist()}]
        }  # fmt: skip
        infer = await plain.post(f"/v2/models/{MODEL}/infer", json=tensor)
        assert "parameters" not in infer.json()
        refused = await plain.post(FEEDBACK, json={"id": "x", "label": 1})
        assert refused.status_code == 409
        assert "feedback needs CANARYML_FEEDBACK_KEY" in refused.text
        metrics = (await plain.get("/metrics")).text
        assert FEEDBACK_LABELS_TOTAL not in metrics


async def test_the_feedback_route_is_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "post" in document["paths"]["/v2/models/{model_name}/feedback"]
    assert {"FeedbackItem", "FeedbackBatch"} <= set(document["components"]["schemas"])


async def _now(value: Any) -> Any:
    return value


# --- through the router -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[Any]:
    """A real upstream on a free port (the router speaks TCP) answered by a server app."""
    async with _client(app) as inner:

        async def forward(request: aiohttp.web.Request, body: bytes) -> aiohttp.web.Response:
            answer = await inner.request(
                request.method,
                request.path_qs,
                content=body,
                headers={"content-type": request.headers.get("content-type", "")},
            )
            headers = {k: v for k, v in answer.headers.items() if k.startswith("x-canaryml")}
            return aiohttp.web.Response(
                body=answer.content,
                status=answer.status_code,
                headers=headers,
                content_type="application/json",
            )

        async with upstream("any", handler=forward) as served:
            yield served


async def test_feedback_through_the_router_reaches_a_server_uncounted_and_unmirrored(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    async with (
        _served(_app(canary, track="stable", model_version="1.0.0")) as stable,
        _served(_app(canary, track="canary")) as canary_upstream,
        _served(_app(canary, track="shadow", model_version="2.0.0")) as shadow,
    ):
        table = RoutingTable(
            upstreams={"stable": stable.url, "canary": canary_upstream.url, "shadow": shadow.url},
            canary_weight=50,
            shadow_percent=100,
        )
        async with (
            create_router_app(model_deployment="bc", table=table) as router,
            router_client(router) as client,
        ):
            answers = [
                await client.post("/predict", json=_records(test_rows.iloc[i : i + 1])[0])
                for i in range(20)
            ]
            by_track: dict[str, list[tuple[str, Any]]] = {}
            for answer in answers:
                body = answer.json()
                by_track.setdefault(body["track"], []).append(
                    (body["ids"][0], body["predictions"][0])
                )
            assert set(by_track) == {"stable", "canary"}
            items = [{"id": i, "label": p} for pairs in by_track.values() for i, p in pairs]
            # Every prediction was mirrored (after its answer): wait for the 20 mirrors.
            await eventually(lambda: _now(len(shadow.seen)), until=lambda n: n == 20)
            taken = await client.post(FEEDBACK, json={"feedback": items})
            assert taken.status_code == 200, taken.text
            assert taken.json() == {"accepted": 20, "duplicates": 0}
            # Counted by the router as no prediction, and never mirrored to the shadow.
            router_metrics = (await client.get("/metrics")).text
            live = [_value(router_metrics, REQUESTS_TOTAL, source="router", track=track)
                    for track in ("stable", "canary")]  # fmt: skip
            assert sum(live) == 20
            await asyncio.sleep(0.2)
            assert len(shadow.seen) == 20
            assert all(seen.path_qs != FEEDBACK for seen in shadow.seen)
            # Whichever server took it, the counts are the ids' tracks'.
            took = next(
                up
                for up in (stable, canary_upstream)
                if any(s.path_qs == FEEDBACK for s in up.seen)
            )
            async with httpx.AsyncClient(base_url=took.url) as direct:
                metrics = (await direct.get("/metrics")).text
            for track, pairs in by_track.items():
                assert _value(metrics, FEEDBACK_LABELS_TOTAL, track=track) == len(pairs)
