"""deploy/grafana: the dashboard queries only real series, sets a unit everywhere, and is provisionable."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DASHBOARD_FILES,
    DEPLOY,
    SCRAPE_SERIES,
    exported_metric_names,
    promql_metric_names,
    recording_rule_names,
    require_tool,
)

DS_VARIABLE = "${DS_PROMETHEUS}"
# Grafana's unit ids for what the daemon measures (packages/grafana-data valueFormats/categories.ts).
UNITS = {"joule", "watt", "s", "percentunit", "ops", "short", "none"}
# Grafana variables, replaced by values Prometheus accepts so promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$site": ".*", "$instance": ".*"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows are only headings), including panels inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel["targets"]]


@pytest.fixture(params=DASHBOARD_FILES, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARD_FILES] == ["edge-runtime.json"]


def test_uid_is_fixed_and_datasource_is_a_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "edge-runtime-fleet"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels(dashboard):
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": DS_VARIABLE}, panel["title"]


def test_every_panel_has_queries_and_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["targets"], f"{panel['title']}: no query"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, f"{panel['title']}: unit {unit!r} is not one of {sorted(UNITS)}"


def test_queries_name_only_series_that_exist(dashboard: dict[str, Any]) -> None:
    known = exported_metric_names() | recording_rule_names() | SCRAPE_SERIES
    used: set[str] = set()
    for title, expr in queries(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{title}: {expr!r} names no metric"
        assert names <= known, f"{title}: {sorted(names - known)} is not exported by the daemon nor recorded"
        used |= names
    # The dashboard covers what operators asked for: energy, power, sparsity, events, latency, drops.
    assert {
        "edge:energy_per_inference_joules:mean5m",
        "edge_model_expected_energy_joules",
        "edge:power_watts:rate5m",
        "edge:layer_activation_sparsity_ratio:mean5m",
        "edge_model_expected_activation_sparsity_ratio",
        "edge_layer_output_events_sum",
        "edge_inference_latency_seconds_bucket",
        "edge_inferences_total",
        "edge:frames_dropped:rate5m",
        "edge_backend_active",
    } <= used


def test_variables_query_real_series(dashboard: dict[str, Any]) -> None:
    known = exported_metric_names()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?, *\w+\)", variable["query"]["query"])
            assert selector and selector.group(1) in known, variable["name"]


def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), with Grafana's variables filled in."""
    rules = []
    for index, (_, expr) in enumerate(queries(dashboard)):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_at_the_dashboard_and_datasource_uid(dashboard: dict[str, Any]) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = (provisioning / "datasources" / "edge-prometheus.yml").read_text()
    default = next(v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS")["current"]["value"]
    assert re.search(rf"^\s+uid: {re.escape(default)}$", datasource, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasource, re.MULTILINE)
    provider = (provisioning / "dashboards" / "edge-runtime.yml").read_text()
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(r"^\s+path: /var/lib/grafana/dashboards/edge-runtime$", provider, re.MULTILINE)


def test_metric_names_of_a_query() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(edge_x_bucket{site=~"$site"}[$__rate_interval])))'
        ' / ignoring (source) group_left edge:y:rate5m > 1e-6 and on (job) up{job="a"} == bool 1'
    )
    assert promql_metric_names(expr) == {"edge_x_bucket", "edge:y:rate5m", "up"}
