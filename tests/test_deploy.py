"""deploy/: the alert rules pass promtool and their unit tests, and the dashboard queries only metrics that exist.

promtool comes from Debian's ``prometheus`` package (scripts/test installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "zimg-queue.json"
METRIC = re.compile(r"\b(zimg_[a-z0-9_]+|up)\b")
#: Series Prometheus makes itself, not scraped from us.
SYNTHETIC = {"up"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/test does)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {rule["alert"] for rule in alert_rules()} == {
        "ZimgNoWorkers", "ZimgQueueGrowing", "ZimgJobFailureRatioHigh", "ZimgInferenceServerDown",
        "ZimgGpuIdleWhileJobsWait",
    }  # fmt: skip


def test_every_alert_has_unit_tests_that_pass():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    cases = [case for t in tests["tests"] for case in t["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it stays quiet"
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json_with_valid_promql(tmp_path):
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "zimg-queue" and doc["schemaVersion"] >= 36
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in doc["panels"] if p["type"] != "row"}
    for wanted in ("Queue depth", "Throughput", "Job latency (worker)", "GPU busy", "Batch size", "Failed jobs"):
        assert wanted in titles
    for p in doc["panels"]:
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys()
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
    # promtool parses PromQL when checking rules: every dashboard query as a recording rule.
    # Grafana's $__rate_interval is replaced by a duration first, as Grafana does.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(dashboard_queries())
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_the_dashboard_and_alerts_query_is_served(procs, web):
    """Scrape a real web API and inference server after a job ran through them."""
    inference = procs.inference(latency_a="0", latency_b="0")
    procs.worker()
    api = web()
    body = {"prompt": "a lighthouse", "width": 64, "height": 64}
    created = requests.post(f"{api.url}/v1/jobs", json=body, timeout=10)
    assert created.status_code == 202, created.text
    job = requests.get(f"{api.url}/v1/jobs/{created.json()['id']}?wait=30", timeout=40).json()
    assert job["status"] == "finished", job
    served = sample_names(requests.get(f"{api.url}/metrics", timeout=10).text)
    served |= sample_names(requests.get(f"{inference.url}/metrics", timeout=10).text)

    queried = {m for expr in dashboard_queries() for m in METRIC.findall(expr)}
    queried |= {m for rule in alert_rules() for m in METRIC.findall(rule["expr"])}
    assert "zimg_gpu_busy_ratio" in queried and "zimg_queue_depth" in queried
    missing = sorted(m for m in queried - SYNTHETIC if m not in served)
    assert not missing, f"queried but not served: {missing}"
