"""What the deploy tests share: where deploy/ lives, which metric names exist, and PromQL name scans.

Why names are collected from a live registry built by ``edge_runtime.metrics`` rather than from a
list: a rule or panel that names a metric the daemon does not export never errors in Prometheus
or Grafana, it just stays empty. Only comparing against what the daemon really registers catches
a rename on either side.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge_runtime.metrics import Metrics
from edge_runtime.pipeline import PIPELINE_DROP_REASONS
from edge_runtime.sources.base import SOURCE_DROP_REASONS

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD_FILES = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

# Series Prometheus itself adds to every scrape target (not exported by the daemon).
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# The sample names each metric type exposes, from its family name (prometheus_client strips
# ``_total`` from counter family names; ``_created`` samples are left out: nothing should query them).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
_RECORD = re.compile(r"^\s*-?\s*record:\s*(\S+)\s*$", re.MULTILINE)
_ALERT = re.compile(r"^\s*-?\s*alert:\s*(\S+)\s*$", re.MULTILINE)
# Every daemon metric starts with edge_, every recording rule with edge:, so a scan for the prefix
# finds each reference in a YAML file, in expressions and in annotation text alike.
PREFIXED_NAME = re.compile(r"(?<![\w:])edge[_:][a-z0-9_:]*[a-z0-9_]")

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)


def exported_metric_names() -> set[str]:
    """Every sample name the daemon's registry can expose, labelled children or not."""
    registry = CollectorRegistry()
    Metrics(registry, (*SOURCE_DROP_REASONS, *PIPELINE_DROP_REASONS))
    return {family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]}


def recording_rule_names() -> set[str]:
    return {name for path in RULE_FILES for name in _RECORD.findall(path.read_text())}


def alert_names() -> set[str]:
    return {name for path in RULE_FILES for name in _ALERT.findall(path.read_text())}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (a scan, not a parser, but exact for our queries).

    Removed first: range selectors (they may hold Grafana's ``$__rate_interval``), strings, label
    matchers, and label lists after by/without/on/ignoring/group_*; what is left that looks like an
    identifier and is not a function call or a keyword is a metric name.
    """
    text = re.sub(r"\[[^\]]*\]", "", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", text):
        follows = text[match.end() :].lstrip()
        if not follows.startswith("(") and match.group() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def require_tool(name: str) -> str:
    """The tool's path; fails (not skips) without it: ``./dev test`` installs Prometheus first."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed; run ./dev test (it installs the Debian package prometheus)")
    return path
