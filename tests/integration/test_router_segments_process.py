"""A/B segments, version pins and per-client rate limits through a real `canaryml router`
process in front of real `canaryml serve` processes (stable 1.0.0, canary 1.1.0)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pytest

from .conftest import free_port
from .test_router_process import DEPLOYMENT, start_router, total, tracks, url_of

__all__ = ["start_router", "tracks"]  # the fixtures this module uses

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"  # the name the example models serve under /v2/models
VERSIONS = {"stable": "1.0.0", "canary": "1.1.0"}


def infer_body(rows: pd.DataFrame) -> dict[str, Any]:
    features = rows.to_numpy()
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(features.shape),
                "datatype": "FP64",
                "data": features.ravel().tolist(),
            }
        ]
    }


def test_segment_requests_are_answered_only_by_the_canary_at_weight_0(
    start_router: Callable[..., str],
    tracks: dict[str, subprocess.Popen[bytes]],
    test_rows: pd.DataFrame,
) -> None:
    urls = {track: url_of(tracks[track]) for track in ("stable", "canary")}
    router = start_router(
        "--model-deployment", DEPLOYMENT, "--canary-weight", "0", "--sticky-header", "x-user",
        "--canary-match", "header:x-tenant=beta", "--canary-match", "cookie:canary=yes",
        *(f"--upstream={track}={url}" for track, url in urls.items()),
    )  # fmt: skip
    rows: list[dict[str, Any]] = test_rows.to_dict(orient="records")  # type: ignore[assignment]
    answered: dict[str, list[str]] = {"segment": [], "other": []}
    with httpx.Client(base_url=router, timeout=30) as client:
        for i in range(200):
            segment = i % 2 == 0
            if segment:
                headers = {"x-tenant": "beta"} if i % 4 == 0 else {"cookie": f"s={i}; canary=yes"}
            else:
                headers = {"x-tenant": "alpha", "cookie": "canary=no"}
            response = client.post(
                "/predict", json=rows[i % len(rows)], headers={**headers, "x-user": f"u{i}"}
            )
            assert response.status_code == 200
            # The server that answered says which it is in its body, not only the router.
            body = response.json()
            assert body["track"] == response.headers["x-canaryml-track"]
            answered["segment" if segment else "other"].append(body["version"])
    assert set(answered["segment"]) == {"1.1.0"} and len(answered["segment"]) == 100
    assert set(answered["other"]) == {"1.0.0"} and len(answered["other"]) == 100
    # Each server counted exactly what it answered.
    assert total(urls["canary"], "canaryml_requests_total", code="200") == 100
    assert total(urls["stable"], "canaryml_requests_total", code="200") == 100


def test_version_pinned_requests_reach_the_right_track_while_the_weights_change(
    start_router: Callable[..., str],
    tracks: dict[str, subprocess.Popen[bytes]],
    test_rows: pd.DataFrame,
) -> None:
    urls = {track: url_of(tracks[track]) for track in ("stable", "canary")}
    admin_port = free_port()
    router = start_router(
        "--model-deployment", DEPLOYMENT, "--admin", "--admin-port", str(admin_port),
        *(f"--upstream={track}={url}" for track, url in urls.items()),
        # Static mode: the versions pins reach (with --follow, the resource's spec says).
        *(f"--version={track}={version}" for track, version in VERSIONS.items()),
    )  # fmt: skip
    rows: list[dict[str, Any]] = test_rows.to_dict(orient="records")  # type: ignore[assignment]
    body = infer_body(test_rows.iloc[:3])
    with (
        httpx.Client(base_url=router, timeout=30) as client,
        httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=30) as admin,
    ):
        for weight in (0, 10, 50, 100, 0):
            assert admin.put("/router/weights", json={"canaryWeight": weight}).status_code == 200
            for i in range(20):
                for track, version in VERSIONS.items():
                    path = f"/v2/models/{MODEL}/versions/{version}/infer"
                    answer = client.post(path, json=body)
                    assert answer.status_code == 200, answer.text
                    assert answer.headers["x-canaryml-track"] == track
                    assert answer.json()["model_version"] == version
                    pinned = client.post(
                        "/predict",
                        json=rows[i % len(rows)],
                        headers={"x-canaryml-model-version": version},
                    )
                    assert (pinned.status_code, pinned.json()["version"]) == (200, version)
        missing = client.post(f"/v2/models/{MODEL}/versions/9.9.9/infer", json=body)
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "model version '9.9.9' is not served here; served: 1.0.0 (stable), "
            "1.1.0 (canary)"
        }
    # 5 weights x 20 rounds x 2 requests per track, on each server.
    assert total(urls["canary"], "canaryml_requests_total", code="200") == 200
    assert total(urls["stable"], "canaryml_requests_total", code="200") == 200


def test_a_client_over_its_rate_limit_gets_429s_while_another_is_unaffected(
    start_router: Callable[..., str],
    tracks: dict[str, subprocess.Popen[bytes]],
    test_rows: pd.DataFrame,
) -> None:
    urls = {track: url_of(tracks[track]) for track in ("stable", "canary")}
    router = start_router(
        "--model-deployment", DEPLOYMENT, "--canary-weight", "50",
        "--rate-limit-requests-per-second", "5", "--rate-limit-burst", "10",
        "--rate-limit-client-header", "x-api-key",
        *(f"--upstream={track}={url}" for track, url in urls.items()),
    )  # fmt: skip
    row = test_rows.iloc[0].to_dict()
    codes: dict[str, list[int]] = {"greedy": [], "polite": []}
    retry_after: set[str] = set()
    with httpx.Client(base_url=router, timeout=30) as client:
        started = time.monotonic()
        # The greedy client sends as fast as it can for 2 s; the polite one 4 a second.
        next_polite = started
        while time.monotonic() - started < 2.0:
            answer = client.post("/predict", json=row, headers={"x-api-key": "greedy"})
            codes["greedy"].append(answer.status_code)
            if answer.status_code == 429:
                retry_after.add(answer.headers["retry-after"])
                assert answer.json()["error"].startswith("rate limit: this client is over")
            if time.monotonic() >= next_polite:
                polite = client.post("/predict", json=row, headers={"x-api-key": "polite"})
                codes["polite"].append(polite.status_code)
                next_polite += 0.25
        elapsed = time.monotonic() - started
    greedy_ok = codes["greedy"].count(200)
    refused = codes["greedy"].count(429)
    assert set(codes["greedy"]) == {200, 429}
    # At most the burst and the rate over the time it ran (a token of slack), and no fewer
    # than the burst.
    assert 10 <= greedy_ok <= 10 + 5 * elapsed + 1, (greedy_ok, elapsed)
    assert refused > greedy_ok, codes
    assert retry_after == {"1"}
    assert codes["polite"] and set(codes["polite"]) == {200}
    # Refused requests are the router's count only, never a track's request or error.
    assert total(router, "canaryml_router_rate_limited_total") == refused
    answered = total(router, "canaryml_requests_total", source="router")
    assert answered == greedy_ok + len(codes["polite"])
    assert total(router, "canaryml_requests_total", code="429") == 0
    served = sum(total(url, "canaryml_requests_total", code="200") for url in urls.values())
    assert served == answered
