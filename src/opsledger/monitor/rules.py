"""Alert rules in the Prometheus rule-file format, and their state over time.

A rule is ``{alert, expr, for, keep_firing_for?, labels, annotations}`` inside named
groups, exactly as Prometheus reads them, so ``opsledger monitor rules export`` writes a
file ``promtool check rules`` accepts and a team running Prometheus loads the same
rules. ``AlertState`` follows Prometheus's lifecycle: a series matching the expression is
*pending* until it has matched for ``for``, then *firing*; when it stops matching it is
*resolved* (after ``keep_firing_for``). Annotations are rendered with the two template
variables alert texts use (``{{ $labels.name }}``, ``{{ $value }}``); anything fancier in
a template is left as written rather than evaluated.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import yaml

from opsledger.core.errors import ConfigError
from opsledger.monitor.promql import (
    Expr,
    Labels,
    PromQLError,
    Sample,
    SampleSource,
    evaluate,
    parse_duration,
)
from opsledger.monitor.promql import parse as parse_expr

__all__ = [
    "DEFAULT_RULES",
    "Alert",
    "AlertEvaluator",
    "AlertTransition",
    "Rule",
    "export_rule_file",
    "load_rule_groups",
]

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "opsledger-evm-nodes",
        "rules": [
            {
                "alert": "ChainHalted",
                "expr": "min by (chain) (opsledger_monitor_evm_head_age_seconds) > 120",
                "for": "1m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "Chain {{ $labels.chain }} has produced no block for"
                    " {{ $value }} seconds on any node",
                    "runbook_url": "https://opsledger.dev/runbooks/chain-halted",
                },
            },
            {
                "alert": "NodeHeadLag",
                "expr": "opsledger_monitor_evm_head_lag_blocks > 5",
                "for": "1m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "{{ $labels.target }} is {{ $value }} blocks behind the best"
                    " node of {{ $labels.chain }}",
                    "runbook_url": "https://opsledger.dev/runbooks/node-head-lag",
                },
            },
            {
                "alert": "NodeDown",
                "expr": "opsledger_monitor_probe_up == 0",
                "for": "1m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "{{ $labels.target }} does not answer its probe",
                    "runbook_url": "https://opsledger.dev/runbooks/target-down",
                },
            },
            {
                "alert": "NodeSyncing",
                "expr": "opsledger_monitor_evm_syncing == 1",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {"summary": "{{ $labels.target }} reports eth_syncing"},
            },
            {
                "alert": "PeerCountLow",
                "expr": "opsledger_monitor_evm_peers < ignoring() opsledger_monitor_evm_min_peers",
                "for": "10m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "{{ $labels.target }} has {{ $value }} peers",
                    "runbook_url": "https://opsledger.dev/runbooks/peer-count-low",
                },
            },
            {
                "alert": "RPCLatencyHigh",
                "expr": "histogram_quantile(0.95, sum by (target, chain, le)"
                " (rate(opsledger_monitor_rpc_latency_seconds_bucket[5m]))) > 0.5",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "RPC latency p95 of {{ $labels.target }} is {{ $value }} s",
                    "runbook_url": "https://opsledger.dev/runbooks/rpc-latency",
                },
            },
        ],
    },
    {
        "name": "opsledger-probes",
        "rules": [
            {
                "alert": "ProbeErrorRate",
                "expr": "rate(opsledger_monitor_probe_errors_total[5m])"
                " / rate(opsledger_monitor_probes_total[5m]) > 0.2",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {"summary": "{{ $labels.target }} fails {{ $value }} of probes"},
            },
            {
                "alert": "CertificateExpiring",
                "expr": "opsledger_monitor_tls_expiry_seconds < 14 * 86400",
                "for": "0s",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "The certificate of {{ $labels.target }} expires in"
                    " {{ $value }} seconds",
                    "runbook_url": "https://opsledger.dev/runbooks/certificate-expiring",
                },
            },
            {
                "alert": "IndexerLag",
                "expr": "opsledger_monitor_indexer_lag_blocks > 100",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {"summary": "{{ $labels.target }} is {{ $value }} blocks behind"},
            },
        ],
    },
]
"""Defaults that encode good practice; a config may override ``for`` or disable any."""


@dataclass(frozen=True)
class Rule:
    group: str
    alert: str
    expr_text: str
    expr: Expr
    for_seconds: float
    keep_firing_for: float
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass
class Alert:
    """One firing (or pending) instance of a rule: the rule plus a series' labels."""

    rule: Rule
    labels: Labels
    value: float
    active_since: float
    state: Literal["pending", "firing"] = "pending"
    fired_at: float | None = None
    last_match: float = 0.0

    @property
    def fingerprint(self) -> str:
        pairs = ",".join(f"{k}={v}" for k, v in self.labels)
        return f"{self.rule.alert}{{{pairs}}}"

    def annotations(self) -> dict[str, str]:
        return {
            key: render(text, self.labels, self.value)
            for key, text in self.rule.annotations.items()
        }


@dataclass(frozen=True)
class AlertTransition:
    kind: Literal["firing", "resolved"]
    alert: Alert
    at: float


def format_value(value: float) -> str:
    """``$value`` as Prometheus's Go templates print a float64 (``%v``): whole numbers
    without a fraction, others in their shortest round-trip form."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def render(template: str, labels: Labels, value: float) -> str:
    mapping = dict(labels)

    def replace_var(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr == "$value":
            return format_value(value)
        if expr.startswith("$labels."):
            return mapping.get(expr.removeprefix("$labels."), "")
        return match.group(0)

    return re.sub(r"\{\{\s*([^}]*?)\s*\}\}", replace_var, template)


def _str_map(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping of strings")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise ConfigError(f"{where}: bad label name {key!r}")
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}.{key}: must be a string")
        out[key] = str(value)
    return out


def load_rule_groups(
    groups: Iterable[Any],
    *,
    source: str = "rules",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    disabled: Iterable[str] = (),
) -> list[Rule]:
    """Validate Prometheus-format groups; errors name ``source``, group, rule and key."""
    rules: list[Rule] = []
    skip = set(disabled)
    seen_groups: set[str] = set()
    for gi, group in enumerate(groups):
        where = f"{source}: groups[{gi}]"
        if not isinstance(group, Mapping) or not isinstance(group.get("name"), str):
            raise ConfigError(f"{where}: a group needs a 'name' and 'rules'")
        if group["name"] in seen_groups:
            raise ConfigError(f"{where}: group {group['name']!r} defined twice")
        seen_groups.add(group["name"])
        raw_rules = group.get("rules")
        if not isinstance(raw_rules, list):
            raise ConfigError(f"{where}.rules: must be a list")
        for ri, raw in enumerate(raw_rules):
            rule_where = f"{where}.rules[{ri}]"
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{rule_where}: must be a mapping")
            if "record" in raw:
                raise ConfigError(f"{rule_where}: recording rules are not supported, only alerts")
            unknown = set(raw) - {
                "alert",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            if unknown:
                raise ConfigError(f"{rule_where}: unknown key(s) {', '.join(sorted(unknown))}")
            name = raw.get("alert")
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(f"{rule_where}.alert: a rule needs an alert name")
            if name in skip:
                continue
            merged = {**raw, **(overrides or {}).get(name, {})}
            expr_text = merged.get("expr")
            if not isinstance(expr_text, str):
                raise ConfigError(f"{rule_where}.expr: must be a PromQL expression")
            try:
                expr = parse_expr(expr_text)
                for_seconds = parse_duration(str(merged.get("for", "0s")))
                keep = parse_duration(str(merged.get("keep_firing_for", "0s")))
            except PromQLError as exc:
                raise ConfigError(f"{rule_where} ({name}): {exc.message}") from None
            rules.append(
                Rule(
                    group=group["name"],
                    alert=name,
                    expr_text=expr_text,
                    expr=expr,
                    for_seconds=for_seconds,
                    keep_firing_for=keep,
                    labels=_str_map(merged.get("labels"), f"{rule_where}.labels"),
                    annotations=_str_map(merged.get("annotations"), f"{rule_where}.annotations"),
                )
            )
    return rules


def export_rule_file(rules: Sequence[Rule]) -> str:
    """The rules as a Prometheus rule file (YAML), grouped as they were loaded."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        entry: dict[str, Any] = {"alert": rule.alert, "expr": rule.expr_text}
        entry["for"] = _format_duration(rule.for_seconds)
        if rule.keep_firing_for:
            entry["keep_firing_for"] = _format_duration(rule.keep_firing_for)
        if rule.labels:
            entry["labels"] = dict(rule.labels)
        if rule.annotations:
            entry["annotations"] = dict(rule.annotations)
        groups.setdefault(rule.group, []).append(entry)
    document = {"groups": [{"name": name, "rules": items} for name, items in groups.items()]}
    return yaml.safe_dump(copy.deepcopy(document), sort_keys=False, width=1000)


def _format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


@dataclass
class AlertEvaluator:
    """Evaluates rules over a sample source and tracks each alert's lifecycle."""

    rules: Sequence[Rule]
    active: dict[str, Alert] = field(default_factory=dict)

    def evaluate(self, source: SampleSource, at: float) -> list[AlertTransition]:
        transitions: list[AlertTransition] = []
        matched: set[str] = set()
        for rule in self.rules:
            result = evaluate(rule.expr, source, at)
            samples = result if isinstance(result, list) else [Sample((), result, at)]
            for sample in samples:
                labels = tuple(
                    sorted(
                        {
                            **{k: v for k, v in sample.labels if k != "__name__"},
                            **rule.labels,
                            "alertname": rule.alert,
                        }.items()
                    )
                )
                alert = Alert(rule, labels, sample.value, at)
                key = alert.fingerprint
                matched.add(key)
                current = self.active.get(key)
                if current is None:
                    current = self.active[key] = alert
                current.value = sample.value
                current.last_match = at
                if current.state == "pending" and at - current.active_since >= rule.for_seconds:
                    current.state = "firing"
                    current.fired_at = at
                    transitions.append(AlertTransition("firing", replace(current), at))
        for key in list(self.active):
            if key in matched:
                continue
            alert = self.active[key]
            if alert.state == "firing" and at - alert.last_match < alert.rule.keep_firing_for:
                continue
            del self.active[key]
            if alert.state == "firing":
                transitions.append(AlertTransition("resolved", alert, at))
        return transitions

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.state == "firing"]


def parse_rule_file(text: str, source: str) -> list[Any]:
    """The ``groups`` of a Prometheus rule file's text."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("groups"), list):
        raise ConfigError(f"{source}: a rule file is a mapping with a 'groups' list")
    groups: list[Any] = document["groups"]
    return groups
