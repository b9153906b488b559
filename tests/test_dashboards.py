"""The Grafana dashboards in ``deploy/grafana/`` use only metrics the code exports.

Every PromQL expression of every panel (and of every templating query) is reduced to the
metric names it selects, and each name must be a sample name one of the real exporters
produces: the monitor's series store as ``MonitorService`` builds it, the gateway's and
the indexer's registries, and the API app's ``/metrics`` (with the ledger metrics) over a
real home. Renaming a metric in the code without updating the dashboards fails here.
The dashboards' shape is checked too (schema version, a Prometheus datasource variable
every panel uses, unique ids, panels inside the 24-column grid).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from opsledger.api import create_app
from opsledger.app import Home
from opsledger.client.local import LocalClient
from opsledger.gateway.metrics import Metrics as GatewayMetrics
from opsledger.indexer.metrics import IndexerMetrics
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.series import SeriesCollector
from opsledger.monitor.service import MonitorService

GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
EXPECTED = {"nodes.json", "gateway.json", "indexer.json", "pipelines-dora.json"}

# PromQL words that look like identifiers but are not metric names
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le",
}  # fmt: skip
_SUFFIXES_BY_TYPE = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (written by hand: no maintained Python
    PromQL parser covers Grafana's ``$variables``; this drops everything that is not a
    selector and keeps identifiers not followed by ``(``)."""
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "x", expr)  # Grafana variables
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", text.strip())
            yield f"variable {variable['name']!r}", inner.group(1) if inner else text


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _sample_names(families: Iterable[Metric]) -> set[str]:
    """Sample names of the families; for a family with no samples yet (a labelled metric
    nobody has touched), the names its type will produce."""
    names: set[str] = set()
    for family in families:
        if family.samples:
            names.update(sample.name for sample in family.samples)
        else:
            names.update(family.name + suffix for suffix in _SUFFIXES_BY_TYPE[family.type])
    return names


def _monitor_names() -> set[str]:
    config = parse_monitor_config(
        {"targets": [{"name": "node-a", "kind": "evm", "url": "http://127.0.0.1:9001"}]}
    )
    service = MonitorService(config, rules=[])
    store = service.store
    for name, kind, _, _ in store.families():  # one point in every family the monitor declares
        if kind == "histogram":
            store.observe(name, {"target": "node-a"}, 0.1, 1.0)
        else:
            store.set(name, {"target": "node-a"}, 1.0, 1.0)
    registry = CollectorRegistry()
    registry.register(SeriesCollector(store))
    return _sample_names(registry.collect())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    names = _monitor_names()
    names |= _sample_names(GatewayMetrics().registry.collect())
    names |= _sample_names(IndexerMetrics().registry.collect())
    home = Home(tmp_path_factory.mktemp("dash") / "h")
    home.init(builtin_contracts=False)
    client = LocalClient(home.open_node())
    try:
        registry = CollectorRegistry()
        create_app(client, registry=registry)
        names |= _sample_names(registry.collect())
    finally:
        client.close()
    return names


def _load(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def test_every_dashboard_is_there() -> None:
    assert {p.name for p in DASHBOARDS} == EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_exported_metrics(path: Path, exported: set[str]) -> None:
    dashboard = _load(path)
    used: dict[str, set[str]] = {}
    for where, expr in _queries(dashboard):
        names = metric_names(expr)
        assert names, f"{path.name}: {where} selects no metric: {expr}"
        for name in names:
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(wheres) for name, wheres in used.items() if name not in exported}
    assert not unknown, f"{path.name} uses metrics no exporter produces: {unknown}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    dashboard = _load(path)
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("opsledger / ")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used in variables or used.startswith("__"), (panel["title"], used)


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (target, le) (rate(a_bucket{chain=~"$chain",'
        ' x="by(y)"}[5m]))) / ignoring(le) b_total offset 5m > bool 0.5 or vector(0)'
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names("time() - c_seconds") == {"c_seconds"}
    assert metric_names('count(up{job="a"} == 0) or on() vector(0)') == {"up"}


def test_a_renamed_metric_is_caught(exported: set[str]) -> None:
    """The check can fail: a name the code does not export is reported."""
    assert "opsledger_monitor_probe_up" in exported
    assert "opsledger_monitor_probe_upp" not in exported
    assert "gateway_requests_total" in exported
    assert "opsledger_deploys_total" in exported


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True))
def test_a_bare_selector_is_its_own_name(name: str) -> None:
    expected = set() if name in _KEYWORDS else {name}
    assert metric_names(f'{name}{{a="b"}}[5m]') == expected


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Prometheus's own parser accepts every panel's PromQL (variables substituted): the
    queries are written as recording rules and checked with ``promtool check rules``."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run `make setup` (installs Debian's prometheus)"
    rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(_queries(_load(path))):
            concrete = re.sub(r"\$__\w+", "5m", expr)
            concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}",
                          "expr": concrete})  # fmt: skip
    rule_file = tmp_path / "dashboards.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
