"""deploy/prometheus: the config, rules and rule tests pass promtool, and every name in them is real."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    PREFIXED_NAME,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TEST_FILES,
    alert_names,
    exported_metric_names,
    recording_rule_names,
    require_tool,
)

from edge_runtime.daemon import DROP_REASONS


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def test_there_are_rules_and_tests() -> None:
    assert [p.name for p in RULE_FILES] == ["edge-alerts.yml", "edge-recording.yml"]
    assert RULE_TEST_FILES


def test_config_is_valid_with_its_rules_and_targets(tmp_path: Path) -> None:
    # Run from elsewhere: rule and file_sd paths must be relative to the config file, as installed.
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert_ok(result)
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_are_valid(path: Path) -> None:
    assert_ok(promtool("check", "rules", path))


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", path)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_every_rule_file_and_rule_is_tested() -> None:
    tests = "\n".join(path.read_text() for path in RULE_TEST_FILES)
    for path in RULE_FILES:
        assert f"../rules/{path.name}" in tests, f"no test file loads {path.name}"
    tested_alerts = set(re.findall(r"alertname:\s*(\S+)", tests))
    assert alert_names() <= tested_alerts, f"untested alerts: {alert_names() - tested_alerts}"
    tested_records = set(re.findall(r"expr:\s*([\w:]+)", tests))
    assert recording_rule_names() <= tested_records, f"untested records: {recording_rule_names() - tested_records}"


@pytest.mark.parametrize("path", RULE_FILES + RULE_TEST_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rules_and_their_tests_name_only_real_metrics(path: Path) -> None:
    """Rules (expressions and annotation text) and test input series use names the daemon exports."""
    known = exported_metric_names() | recording_rule_names()
    named = set(PREFIXED_NAME.findall(path.read_text()))
    assert named, f"{path.name} names no edge metric"
    assert named <= known, f"{path.name} names metrics the daemon does not export: {sorted(named - known)}"


@pytest.mark.parametrize("path", RULE_FILES + RULE_TEST_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rules_and_their_tests_name_only_real_drop_reasons(path: Path) -> None:
    """``reason="..."`` matchers and series, and reasons listed in comments, are ones the daemon counts."""
    text = path.read_text()
    named = set(re.findall(r'reason="(\w+)"', text))
    for listed in re.findall(r"by reason \(([^)]*)\)", text):
        named |= {word for word in re.split(r",\s*", listed) if word and word != "..."}
    assert named <= set(DROP_REASONS), (
        f"{path.name} names drop reasons the daemon never counts: {sorted(named - set(DROP_REASONS))}"
    )
