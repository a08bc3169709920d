"""A/B segments, version pins and per-client rate limits: the pure decisions of the router
(`canaryml_router.core`), the spec fields they come from, the router's bucket store, and the
HTTPRoute rule the operator writes for segments."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.routing import plan_routing
from canaryml_operator import children, rollout
from canaryml_operator.state import Owner
from canaryml_router.core import (
    Bucket,
    RateLimit,
    RoutingTable,
    SegmentRule,
    choose_track,
    cookie_value,
    in_segment,
    path_version,
    pinned_track,
    sticky_bucket,
    table_from_model_deployment,
    take_token,
)
from canaryml_router.ratelimit import ClientLimiter, client_key
from canaryml_router.settings import RouterSettings
from pydantic import ValidationError

UPSTREAMS = {"stable": "http://s", "canary": "http://c", "shadow": "http://sh"}
VERSIONS = {"stable": "1.0.0", "canary": "1.1.0", "shadow": "2.0.0"}
STABLE = {"uri": "s3://m/1", "version": "1.0.0"}
CANARY = {"uri": "s3://m/2", "version": "1.1.0"}


def rules(*matches: dict[str, str]) -> tuple[SegmentRule, ...]:
    return tuple(SegmentRule.of(api.CanaryMatch.model_validate(m)) for m in matches)


def table(**overrides: Any) -> RoutingTable:
    values: dict[str, Any] = {"upstreams": UPSTREAMS, "versions": VERSIONS}
    values.update(overrides)
    return RoutingTable(**values)


def heads(**values: str | list[str]) -> dict[bytes, list[bytes]]:
    """Request headers by lowercase name, as the proxy picks them."""
    return {
        name.replace("_", "-").encode(): [
            v.encode() for v in ([value] if isinstance(value, str) else value)
        ]
        for name, value in values.items()
    }


# --- segment rules -----------------------------------------------------------------------------


def test_an_exact_header_rule_matches_that_value_only() -> None:
    segment = rules({"header": "X-Tenant", "value": "beta"})
    assert segment[0].wanted == b"x-tenant"  # names compared lowercase, as ASGI carries them
    assert in_segment(segment, heads(x_tenant="beta"))
    assert in_segment(segment, heads(x_tenant=["alpha", "beta"]))  # any line of the header
    assert not in_segment(segment, heads(x_tenant="Beta"))
    assert not in_segment(segment, heads(x_tenant="beta2"))
    assert not in_segment(segment, heads(x_other="beta"))
    assert not in_segment(segment, {})


def test_a_regex_rule_matches_the_whole_value() -> None:
    segment = rules({"header": "x-group", "regex": "team-[a-z]+"})
    assert in_segment(segment, heads(x_group="team-ml"))
    assert not in_segment(segment, heads(x_group="my-team-ml"))  # fullmatch, as RE2 in Envoy
    assert not in_segment(segment, heads(x_group="team-ml!"))
    # Values over the bound never match a regex: the cost of a match stays bounded.
    assert not in_segment(segment, heads(x_group="team-" + "a" * api.MAX_REGEX_MATCHED_LENGTH))


def test_a_cookie_rule_finds_its_pair_among_the_cookies() -> None:
    segment = rules({"cookie": "canary", "value": "yes"})
    assert segment[0].wanted == b"cookie"
    assert in_segment(segment, heads(cookie="canary=yes"))
    assert in_segment(segment, heads(cookie="session=abc; canary=yes; theme=dark"))
    assert in_segment(segment, heads(cookie=["session=abc", "canary=yes"]))
    assert not in_segment(segment, heads(cookie="canary=no"))
    assert not in_segment(segment, heads(cookie="xcanary=yes"))
    assert not in_segment(segment, heads(cookie="canary=yes2"))
    assert not in_segment(segment, heads(x_canary="yes"))
    assert cookie_value(b"a=1;b=2", b"b") == b"2"
    assert cookie_value(b"a", b"a") is None


def test_any_rule_puts_a_request_in_the_segment() -> None:
    segment = rules({"header": "x-tenant", "value": "beta"}, {"cookie": "canary", "value": "yes"})
    assert in_segment(segment, heads(cookie="canary=yes"))
    assert in_segment(segment, heads(x_tenant="beta"))
    assert not in_segment(segment, heads(x_tenant="alpha", cookie="canary=no"))


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1, 50, 100])
def test_a_segment_request_goes_to_the_canary_whatever_its_weight(weight: int) -> None:
    routing = table(canary_weight=weight, sticky_header="x-user")
    for draw in (0.0, 0.5, 0.999):
        for user in ("a", "b", None):
            assert choose_track(routing, sticky_value=user, draw=draw, segment=True) == "canary"


def test_without_a_canary_a_segment_request_goes_to_the_stable() -> None:
    no_canary = RoutingTable(upstreams={"stable": "http://s"})
    assert choose_track(no_canary, sticky_value=None, draw=0.0, segment=True) == "stable"
    # A rolled-back canary (not serving): matched requests are routed as any other, and its
    # weight is 0 then.
    rolled_back = table(canary_weight=0, canary_serving=False)
    assert choose_track(rolled_back, sticky_value=None, draw=0.0, segment=True) == "stable"


def test_sticky_users_outside_every_segment_keep_their_track() -> None:
    routing = table(canary_weight=30, sticky_header="x-user")
    for i in range(2000):
        user = f"user-{i}"
        plain = choose_track(routing, sticky_value=user, draw=0.5)
        assert choose_track(routing, sticky_value=user, draw=0.9, segment=False) == plain
        assert plain == ("canary" if sticky_bucket(user) < 3000 else "stable")


def test_the_table_of_a_model_deployment_serves_segments_only_while_the_rollout_runs() -> None:
    def obj(phase: str, *, model: dict[str, str] = CANARY) -> dict[str, Any]:
        return {
            "metadata": {"name": "iris"},
            "spec": {
                "model": STABLE,
                "canary": {"model": CANARY},
                "routing": {"canaryMatch": [{"header": "x-tenant", "value": "beta"}]},
            },
            "status": {"phase": phase, "canaryWeight": 0, "canaryModel": model},
        }

    for phase in ("Pending", "Progressing", "Paused"):
        routing = table_from_model_deployment(obj(phase))
        assert routing.canary_available and routing.canary_weight == 0
        assert choose_track(routing, sticky_value=None, draw=0.0, segment=True) == "canary"
    for phase in ("RolledBack", "Promoted", "Failed", "Stable"):
        routing = table_from_model_deployment(obj(phase))
        assert not routing.canary_available, phase
        assert choose_track(routing, sticky_value=None, draw=0.0, segment=True) == "stable"
    # Promoted, the canary keeps its weight until the stable serves its model: pins and segments
    # still reach it; at weight 0 the stable serves that version.
    promoted = obj("Promoted")
    promoted["status"]["canaryWeight"] = 50
    assert table_from_model_deployment(promoted).canary_available
    # The status is about another canary (the spec changed; the operator has not started it).
    older = table_from_model_deployment(obj("Progressing", model=STABLE))
    assert not older.canary_available
    assert older.segments == rules({"header": "x-tenant", "value": "beta"})


# --- version pins ------------------------------------------------------------------------------


def test_the_version_a_path_pins() -> None:
    assert path_version("/v2/models/iris/versions/1.1.0/infer") == "1.1.0"
    assert path_version("/v2/models/iris/versions/1.1.0") == "1.1.0"
    assert path_version("/v2/models/iris/versions/1.1.0/ready") == "1.1.0"
    for path in (
        "/predict",
        "/v2/models/iris/infer",
        "/v2/models/iris/versions/",
        "/v2/models//versions/1/infer",
        "/v1/models/iris/versions/1/infer",
    ):
        assert path_version(path) is None, path


def test_a_pinned_version_reaches_the_track_serving_it_and_never_the_shadow() -> None:
    routing = table(canary_weight=0)
    assert pinned_track(routing, "1.0.0") == "stable"
    assert pinned_track(routing, "1.1.0") == "canary"  # at weight 0 too
    assert pinned_track(routing, "2.0.0") is None  # the shadow's
    assert pinned_track(routing, "9.9.9") is None
    assert routing.served_versions() == {"stable": "1.0.0", "canary": "1.1.0"}
    # One version on both tracks: the stable answers.
    same = table(versions={"stable": "1.0.0", "canary": "1.0.0"})
    assert pinned_track(same, "1.0.0") == "stable"
    # A canary that is not serving (rolled back) is not pinned to.
    gone = table(canary_serving=False)
    assert pinned_track(gone, "1.1.0") is None
    assert gone.served_versions() == {"stable": "1.0.0"}


def test_pinned_clients_keep_their_track_while_the_weights_change() -> None:
    for weight in (0, 10, 50, 100):
        routing = table(canary_weight=weight)
        assert (pinned_track(routing, "1.0.0"), pinned_track(routing, "1.1.0")) == (
            "stable",
            "canary",
        )


# --- rate limits -------------------------------------------------------------------------------


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit.of(2.0, 3, None)
    bucket: Bucket | None = None
    waits = []
    for _ in range(4):
        bucket, wait = take_token(bucket, limit, now=100.0)
        waits.append(wait)
    assert waits[:3] == [None, None, None]
    assert waits[3] == pytest.approx(0.5)  # one token comes back every 1 / 2 s
    assert bucket is not None
    bucket, wait = take_token(bucket, limit, now=100.49)
    assert wait == pytest.approx(0.01)
    bucket, wait = take_token(bucket, limit, now=100.5)
    assert wait is None
    # Refilled to the burst at most, however long the client was away.
    bucket, _ = take_token(bucket, limit, now=10_000.0)
    assert bucket.tokens == pytest.approx(2.0)
    # A clock going back refills nothing and breaks nothing.
    back, wait = take_token(Bucket(0.0, 50.0), limit, now=40.0)
    assert wait == pytest.approx(0.5) and back.tokens == 0.0


def test_the_default_burst_is_the_rate_rounded_up() -> None:
    assert RateLimit.of(0.5, None, None).burst == 1
    assert RateLimit.of(7.2, None, "X-Api-Key") == RateLimit(7.2, 8, "x-api-key")
    with pytest.raises(ValueError, match="above 0"):
        RateLimit(0.0, 1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(1.0, 0)


def test_the_limiter_keeps_each_client_apart_and_a_bounded_number_of_them() -> None:
    now = [0.0]
    limiter = ClientLimiter(max_clients=3, clock=lambda: now[0])
    limit = RateLimit.of(1.0, 2, None)
    a, b = client_key(b"tenant-a", None), client_key(None, ("10.0.0.1", 5000))
    assert [limiter.check(a, limit) for _ in range(3)] == [None, None, pytest.approx(1.0)]
    assert limiter.check(b, limit) is None  # another client is unaffected
    for i in range(10):
        limiter.check(client_key(None, (f"10.1.0.{i}", 1)), limit)
    assert len(limiter) == 3  # the least recently seen were evicted
    now[0] = 1.0
    assert limiter.check(a, limit) is None  # a (evicted) comes back with a full bucket


def test_client_keys_name_headers_and_peers_apart_and_stay_small() -> None:
    assert client_key(b"10.0.0.1", None) != client_key(None, ("10.0.0.1", 1))
    assert client_key(None, None) == b"p:unknown"
    assert len(client_key(b"k" * 10_000, None)) <= 20
    assert client_key(b"k" * 10_000, None) != client_key(b"k" * 9_999, None)


def test_the_table_takes_the_specs_rate_limit() -> None:
    obj = {
        "metadata": {"name": "iris"},
        "spec": {
            "model": STABLE,
            "routing": {"rateLimit": {"requestsPerSecond": 5, "clientHeader": "X-Api-Key"}},
        },
    }
    assert table_from_model_deployment(obj).rate_limit == RateLimit(5.0, 5, "x-api-key")


# --- the spec and the settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"header": "x", "cookie": "y", "value": "a"}, "a header or a cookie"),
        ({"value": "a"}, "a header or a cookie"),
        ({"header": "x", "value": "a", "regex": "a"}, "a value or a regex"),
        ({"cookie": "c", "regex": "a"}, "exact value"),
        ({"cookie": "c", "value": "a b"}, "not a cookie value"),
        ({"header": "x", "regex": "(a+)+"}, "repetition inside a repetition"),
        ({"header": "x", "regex": "(ab*)*"}, "repetition inside a repetition"),
        ({"header": "x", "regex": r"(a)\1"}, "backreferences"),
        ({"header": "x", "regex": "(?=a)a"}, "lookaround"),
        ({"header": "x", "regex": "a.*b.*c.*"}, "more than 2 repetitions"),
        ({"header": "x", "regex": "(a|aa)*b"}, "alternation inside a repetition"),
        ({"header": "x", "regex": "a" * 257}, "at most 256"),
        ({"header": "x", "regex": "(unclosed"}, "not a regular expression"),
        ({"header": "bad header", "value": "a"}, "pattern"),
    ],
)
def test_unsafe_or_ambiguous_segment_rules_are_refused(match: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        api.CanaryMatch.model_validate(match)


def test_the_segment_list_and_the_rate_limit_are_bounded() -> None:
    many = [{"header": "x", "value": str(i)} for i in range(api.MAX_CANARY_MATCHES + 1)]
    with pytest.raises(ValidationError, match="at most 16"):
        api.RoutingSpec.model_validate({"canaryMatch": many})
    with pytest.raises(ValidationError, match="greater than 0"):
        api.RateLimitSpec.model_validate({"requestsPerSecond": 0})
    with pytest.raises(ValidationError):
        api.RateLimitSpec.model_validate({"requestsPerSecond": 1, "burst": 0})


def test_the_routers_settings_read_segments_and_limits() -> None:
    settings = RouterSettings(
        model_deployment="iris",
        upstreams=["stable=http://s", "canary=http://c"],
        canary_match=["header:x-tenant=beta", "header:x-group=~team-.*", "cookie:canary=yes"],
        rate_limit_requests_per_second=2.5,
        rate_limit_client_header="X-Api-Key",
    )
    static = settings.static_table()
    assert static.segments == rules(
        {"header": "x-tenant", "value": "beta"},
        {"header": "x-group", "regex": "team-.*"},
        {"cookie": "canary", "value": "yes"},
    )
    assert static.rate_limit == RateLimit(2.5, 3, "x-api-key")
    from_json = RouterSettings(
        model_deployment="iris",
        upstreams=["stable=http://s"],
        canary_match='[{"header": "x-tenant", "value": "beta"}]',
    )
    assert from_json.canary_match == [api.CanaryMatch(header="x-tenant", value="beta")]
    assert (
        RouterSettings(model_deployment="iris", upstreams=["stable=http://s"]).rate_limit() is None
    )
    with pytest.raises(ValidationError, match="expected header:NAME=VALUE"):
        RouterSettings(model_deployment="iris", upstreams=["stable=http://s"], canary_match=["x"])
    with pytest.raises(ValidationError, match="repetition inside"):
        RouterSettings(
            model_deployment="iris", upstreams=["stable=http://s"], canary_match=["header:x=~(a+)+"]
        )


# --- the HTTPRoute -----------------------------------------------------------------------------

OWNER = Owner(name="iris", namespace="ml", uid="uid-1")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def route_of(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    parsed = api.parse_spec({"model": STABLE, "canary": {"model": CANARY}, **spec})
    plan = rollout.plan_tracks(spec=parsed, status=api.parse_status(status), now=NOW)
    built = children.build_children(owner=OWNER, spec=parsed, image="img", plan=plan)
    (route,) = [m for m in built if m["kind"] == "HTTPRoute"]
    return route


RUNNING = {"phase": "Progressing", "canaryWeight": 0, "canaryModel": CANARY}
GATEWAY = {
    "router": "gateway-api",
    "canaryMatch": [
        {"header": "x-tenant", "value": "beta"},
        {"header": "x-group", "regex": "team-[a-z]+"},
        {"cookie": "canary", "value": "yes"},
    ],
}


def test_the_httproute_sends_segments_to_the_canary_at_weight_0() -> None:
    shadow = {"model": {"uri": "s3://m/3", "version": "2.0.0"}, "percent": 10}
    route = route_of({"routing": GATEWAY, "shadow": shadow}, RUNNING)
    segment, split = route["spec"]["rules"]
    assert segment["backendRefs"] == [{"name": "iris-canary", "port": 80}]
    headers = [match["headers"] for match in segment["matches"]]
    assert headers[0] == [{"type": "Exact", "name": "x-tenant", "value": "beta"}]
    assert headers[1] == [{"type": "RegularExpression", "name": "x-group", "value": "team-[a-z]+"}]
    (cookie,) = headers[2]
    assert (cookie["type"], cookie["name"]) == ("RegularExpression", "Cookie")
    for value, matched in [("canary=yes", True), ("a=1; canary=yes; b=2", True),
                           ("canary=yes2", False), ("xcanary=yes", False)]:  # fmt: skip
        assert bool(re.fullmatch(cookie["value"], value)) is matched, value
    # The split rule is unchanged: the canary at its weight (0), and the shadow's mirror on both.
    assert [b["weight"] for b in split["backendRefs"]] == [100, 0]
    assert segment["filters"] == split["filters"]
    assert "matches" not in split


@pytest.mark.parametrize("phase", ["RolledBack", "Promoted"])
def test_the_httproute_has_no_segment_rule_once_the_rollout_ended(phase: str) -> None:
    route = route_of({"routing": GATEWAY}, {**RUNNING, "phase": phase})
    assert [rule.get("matches") for rule in route["spec"]["rules"]] == [None]


def test_the_httproute_has_no_segment_rule_without_segments() -> None:
    route = route_of({"routing": {"router": "gateway-api"}}, RUNNING)
    assert len(route["spec"]["rules"]) == 1


def test_the_plan_says_when_segments_reach_the_canary() -> None:
    parsed = api.parse_spec({"model": STABLE, "canary": {"model": CANARY}, "routing": GATEWAY})
    running = plan_routing(parsed, api.parse_status(RUNNING))
    assert running.canary_serving and len(running.canary_match) == 3
    rolled = plan_routing(parsed, api.parse_status({**RUNNING, "phase": "RolledBack"}))
    assert not rolled.canary_serving


def test_limits_and_segments_need_a_router_that_applies_them() -> None:
    with pytest.raises(ValidationError, match="rateLimit is the builtin router's"):
        api.RoutingSpec.model_validate(
            {"router": "gateway-api", "rateLimit": {"requestsPerSecond": 5}}
        )
    with pytest.raises(ValidationError, match="canaryMatch needs a router"):
        api.RoutingSpec.model_validate(
            {"router": "none", "canaryMatch": [{"header": "x", "value": "1"}]}
        )
    gateway = api.RoutingSpec.model_validate(
        {"router": "gateway-api", "canaryMatch": [{"header": "x", "value": "1"}]}
    )
    assert len(gateway.canary_match) == 1
