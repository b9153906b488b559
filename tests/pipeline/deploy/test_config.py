"""The deploy mapping: what is accepted, and errors that name the file and the key."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.core import ConfigError
from opsledger.pipeline.deploy import parse_deploy
from opsledger.pipeline.deploy.config import (
    KubernetesSettings,
    ProcessSettings,
    parse_duration,
    parse_settings,
)

GOOD: dict[str, Any] = {
    "service": "shop",
    "environment": "production",
    "strategy": "canary",
    "target": {"kind": "process", "command": "python {artifact} --port {port}", "instances": 3},
    "health": {
        "http": {"path": "/health", "status": 200, "body": '"ok"'},
        "command": ["curl", "-fsS", "http://x"],
        "timeout": "20s",
        "metrics": {"window": "30s", "max_error_rate": 0.01, "max_latency_p95_ms": 250},
    },
    "canary": {"steps": [5, 25], "hold": "1m"},
}


def test_a_full_mapping() -> None:
    settings = parse_settings(GOOD, "pipeline.yaml:12")
    assert isinstance(settings.target, ProcessSettings)
    assert settings.target.command == ("python", "{artifact}", "--port", "{port}")
    assert settings.canary.steps == (5, 25, 100)  # 100% is always the last step
    assert settings.canary.hold_s == 60.0
    assert settings.health.metrics is not None
    assert settings.health.metrics.max_latency_p95_ms == 250.0
    assert settings.health.http is not None and settings.health.http.body is not None
    assert not settings.protected
    spec = parse_deploy(GOOD, "pipeline.yaml:12")
    assert (spec.service, spec.environment, spec.strategy) == ("shop", "production", "canary")


def test_protection_comes_from_the_home_or_the_mapping_and_only_adds() -> None:
    assert parse_settings(GOOD, "f", {"production": True}).protected
    assert parse_settings(
        {**GOOD, "environments": {"production": {"protected": True}}}, "f"
    ).protected
    assert parse_settings({**GOOD, "protected": True}, "f").protected
    # the mapping cannot lift the home's protection
    assert parse_settings(
        {**GOOD, "environments": {"production": {"protected": False}}}, "f", {"production": True}
    ).protected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "big-bang"},
         "pipeline.yaml:7: strategy must be rolling, blue-green or canary"),
        ({"helth": {}}, "pipeline.yaml:7: unknown key helth"),
        ({"target": {"kind": "process"}}, "target.command is required"),
        ({"target": {"kind": "vm"}}, "target.kind must be process, script or kubernetes"),
        ({"target": {"kind": "process", "command": "x", "instances": 0}},
         "target.instances must be an integer from 1 to 64"),
        ({"target": {"kind": "process", "command": "x", "listen": "8080"}},
         "target.listen must be HOST:PORT"),
        ({"target": {"kind": "process", "command": "x", "comand": "y"}},
         "unknown key target.comand"),
        ({"health": {"http": {"path": "health"}}}, "health.http.path must start with /"),
        ({"health": {"timeout": "soon"}}, "health.timeout must be a duration"),
        ({"health": {"metrics": {"max_error_rate": 2}}},
         "health.metrics.max_error_rate must be between 0.0 and 1.0"),
        ({"canary": {"steps": [25, 5]}}, "canary.steps must be increasing percentages"),
        ({"canary": {"steps": [0, 50]}}, "canary.steps must be increasing percentages"),
        ({"environment": "prod env"}, "environment must be a name"),
        ({"target": {"kind": "script", "deploy": "./d.sh"}, "health": {"metrics": {}}},
         "health.metrics needs the process target"),
        ({"target": {"kind": "kubernetes", "manifest": "k.yaml", "deployment": "shop"}},
         "strategy must be rolling with the kubernetes target"),
    ],
)  # fmt: skip
def test_errors_name_where_and_the_key(change: dict[str, Any], message: str) -> None:
    raw = {**GOOD, **change}
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, "pipeline.yaml:7")
    assert message in caught.value.message
    assert caught.value.message.startswith("pipeline.yaml:7: ")


def test_kubernetes_rolling() -> None:
    raw = {
        **GOOD,
        "strategy": "rolling",
        "health": {},
        "target": {"kind": "kubernetes", "manifest": "k.yaml", "deployment": "shop"},
    }
    target = parse_settings(raw, "f").target
    assert isinstance(target, KubernetesSettings) and target.kubectl == "kubectl"


@given(
    st.floats(min_value=0, max_value=10_000, allow_nan=False),  # 10,000 min < 7 days
    st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0), ("", 1.0)]),
)
def test_durations(value: float, unit: tuple[str, float]) -> None:
    text = f"{value:.3f}{unit[0]}"
    assert parse_duration(text) == pytest.approx(float(f"{value:.3f}") * unit[1])


@given(st.text(max_size=10))
def test_anything_else_is_refused(text: str) -> None:
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h)?\s*", text):
        return
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)
