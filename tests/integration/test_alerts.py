"""The chart's alerts, checked and unit-tested by Prometheus's own promtool.

The PrometheusRule is rendered by helm; its groups go to `promtool check rules` (syntax, label
and annotation templates) and `promtool test rules`, which feeds synthetic series of the
operator's and the model servers' metrics through the rules on Prometheus's own engine and
compares the alerts that fire, minute by minute, with those expected: a rollback, analyses that
keep erroring while another resource's succeed, a Progressing canary whose weight does not move,
forged feedback refused for a while (not a stray item, not expired labels), and a canary less
accurate than its own ModelDeployment's stable track on enough labels.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_api.telemetry import (
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_LABELS_TOTAL,
    FEEDBACK_REJECT_REASONS,
    FEEDBACK_REJECTED_TOTAL,
)

from tests.chart import find, render
from tests.tools import promtool

VALUES = {
    "monitoring.prometheusRule.enabled": "true",
    "monitoring.prometheusRule.stuckAfter": "30m",
    "monitoring.prometheusRule.analysisErrorsFor": "10m",
}


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    (rule,) = find(render(values=VALUES), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in {"namespace": "ml", **labels}.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def alert(rules: dict[str, Any], name: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    """An expectation: at `at`, `name` fires for exactly these label sets, with its annotations'
    templates filled in with them."""

    def annotations(labels: dict[str, str]) -> dict[str, str]:
        filled = {}
        for key, template in rules[name]["annotations"].items():
            for label, value in labels.items():
                template = template.replace(f"{{{{ $labels.{label} }}}}", value)
            filled[key] = template
        return filled

    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {
                "exp_labels": {"severity": "warning", **labels},
                "exp_annotations": annotations(labels),
            }
            for labels in fired
        ],
    }


IRIS = {"namespace": "ml", "model_deployment": "iris"}
# The reasons CanarymlFeedbackRefused is about: forged or misrouted prediction ids.
FORGED = ("tampered", "unknown_key", "other_deployment")


def labelled(
    track: str, per_minute: float, accuracy: float, minutes: int = 150, **labels: str
) -> list[dict[str, str]]:
    """A track's feedback counters: `per_minute` labels, `accuracy` of them correct."""
    labels = {"track": track, **labels}
    return [
        series(FEEDBACK_LABELS_TOTAL, f"0+{per_minute}x{minutes}", **labels),
        series(FEEDBACK_CORRECT_TOTAL, f"0+{per_minute * accuracy}x{minutes}", **labels),
    ]


def test_the_rules_pass_promtool_check(rules_file: Path) -> None:
    result = run("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_the_alerts_fire_when_they_should_and_only_then(rules_file: Path, tmp_path: Path) -> None:
    groups = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    rollbacks = "canaryml_operator_rollouts_total"
    analyses = "canaryml_operator_analyses_total"
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a rollback fires once, for a while",
                "interval": "1m",
                "input_series": [
                    series(
                        rollbacks,
                        "0 0 0 1 1 1 1 1 1x30",
                        model_deployment="iris",
                        result="rolledBack",
                    ),
                    series(rollbacks, "0 0 0 1 1x30", model_deployment="iris", result="promoted"),
                ],
                "alert_rule_test": [
                    alert(rules, "CanarymlRolledBack", "2m"),
                    alert(rules, "CanarymlRolledBack", "5m", IRIS),
                    alert(rules, "CanarymlRolledBack", "30m"),  # 15 min without a new one
                ],
            },
            {
                "name": "analyses that all error fire; one success among them does not",
                "interval": "1m",
                "input_series": [
                    series(analyses, "0+1x40", model_deployment="iris", verdict="Error"),
                    series(analyses, "0x40", model_deployment="iris", verdict="Successful"),
                    series(analyses, "0+1x40", model_deployment="wine", verdict="Error"),
                    series(analyses, "0x20 1x20", model_deployment="wine", verdict="Inconclusive"),
                ],
                "alert_rule_test": [
                    alert(rules, "CanarymlAnalysisErroring", "1m"),  # not yet for 2m
                    alert(
                        rules,
                        "CanarymlAnalysisErroring",
                        "10m",
                        IRIS,
                        {"namespace": "ml", "model_deployment": "wine"},
                    ),
                    alert(rules, "CanarymlAnalysisErroring", "25m", IRIS),
                ],
            },
            {
                "name": "a Progressing canary stuck at one weight fires; a moving one does not",
                "interval": "1m",
                "input_series": [
                    series(
                        "canaryml_operator_phase",
                        "1x90",
                        model_deployment="iris",
                        phase="Progressing",
                    ),
                    series("canaryml_operator_canary_weight", "10x90", model_deployment="iris"),
                    series(
                        "canaryml_operator_phase",
                        "1x90",
                        model_deployment="wine",
                        phase="Progressing",
                    ),
                    series("canaryml_operator_canary_weight", "10+1x90", model_deployment="wine"),
                    series(
                        "canaryml_operator_phase", "1x90", model_deployment="paused", phase="Paused"
                    ),
                    series("canaryml_operator_canary_weight", "25x90", model_deployment="paused"),
                ],
                "alert_rule_test": [
                    alert(rules, "CanarymlCanaryStuck", "25m"),  # stuck, but not yet for 30m
                    alert(rules, "CanarymlCanaryStuck", "35m", IRIS),
                    alert(rules, "CanarymlCanaryStuck", "85m", IRIS),
                ],
            },
            {
                "name": "forged feedback refused for 10m fires; a stray item or late labels do not",
                "interval": "1m",
                "input_series": [
                    # Every reason exists at 0 from the start (the servers declare them).
                    *(
                        series(
                            FEEDBACK_REJECTED_TOTAL,
                            "0+2x40" if reason == "tampered" else "0x40",
                            model_deployment="iris",
                            track="stable",
                            version="1",
                            reason=reason,
                        )
                        for reason in FEEDBACK_REJECT_REASONS
                    ),
                    # Refused by two replicas, of different tracks: one alert.
                    series(
                        FEEDBACK_REJECTED_TOTAL,
                        "0x10 0+1x30",
                        model_deployment="iris",
                        track="canary",
                        version="2",
                        reason="tampered",
                    ),
                    # One misrouted item: refused for 5m of rate, not 10m.
                    series(
                        FEEDBACK_REJECTED_TOTAL,
                        "0 0 0 1x40",
                        model_deployment="wine",
                        track="stable",
                        version="1",
                        reason="other_deployment",
                    ),
                    # Labels that came too late, all the time: not forged.
                    series(
                        FEEDBACK_REJECTED_TOTAL,
                        "0+5x40",
                        model_deployment="wine",
                        track="stable",
                        version="1",
                        reason="expired",
                    ),
                ],
                "alert_rule_test": [
                    alert(rules, "CanarymlFeedbackRefused", "5m"),  # not yet for 10m
                    alert(rules, "CanarymlFeedbackRefused", "8m"),  # wine's one item: no
                    alert(rules, "CanarymlFeedbackRefused", "15m", {**IRIS, "reason": "tampered"}),
                    alert(rules, "CanarymlFeedbackRefused", "40m", {**IRIS, "reason": "tampered"}),
                ],
            },
            {
                "name": "a canary 10 points below its own stable on 100+ labels fires, only then",
                "interval": "1m",
                "input_series": [
                    # ml/iris: stable 90 % over two replicas, canary 80 % at 2 labels a minute
                    # (100 in the hour only after about 50m).
                    *labelled("stable", 6, 0.9, model_deployment="iris", version="1", pod="a"),
                    *labelled("stable", 4, 0.9, model_deployment="iris", version="1", pod="b"),
                    *labelled("canary", 2, 0.8, model_deployment="iris", version="2", pod="c"),
                    # ml/wine: 2 points lower only.
                    *labelled("stable", 10, 0.9, model_deployment="wine", version="1"),
                    *labelled("canary", 10, 0.88, model_deployment="wine", version="2"),
                    # ml/cherry: 30 points lower, but 60 canary labels an hour.
                    *labelled("stable", 10, 0.9, model_deployment="cherry", version="1"),
                    *labelled("canary", 1, 0.6, model_deployment="cherry", version="2"),
                    # ml/plum: 30 points lower, but its stable has too few labels to compare.
                    *labelled("stable", 1, 0.9, model_deployment="plum", version="1"),
                    *labelled("canary", 10, 0.6, model_deployment="plum", version="2"),
                    # staging/iris: the same name in another namespace, its stable much worse
                    # (50 %) and its canary better: compared with each other only.
                    *labelled(
                        "stable", 10, 0.5, namespace="staging", model_deployment="iris", version="1"
                    ),
                    *labelled(
                        "canary",
                        10,
                        0.85,
                        namespace="staging",
                        model_deployment="iris",
                        version="2",
                    ),
                ],
                "alert_rule_test": [
                    alert(rules, "CanarymlAccuracyBelowStable", "40m"),  # too few canary labels
                    alert(rules, "CanarymlAccuracyBelowStable", "90m", {**IRIS, "version": "2"}),
                    alert(rules, "CanarymlAccuracyBelowStable", "140m", {**IRIS, "version": "2"}),
                ],
            },
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    result = run("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
