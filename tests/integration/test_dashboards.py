"""contrib/ dashboards and alerts (issue 14 item 3) and the metrics they are built on.

The alerting rules pass `promtool check rules` and their unit tests (`promtool test rules`);
every PromQL query of the Grafana dashboard parses; every metric either file names is exported
by a live daemon's /metrics; and the metrics added for them measure what they say.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import hostdb
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.integrations import create_integration, create_token
from support.net import reserved_port
from support.oauth_server import InvalidGrant, OAuthServer

from dispatcher.integrations import stats as integration_stats
from dispatcher.queries import query

pytest_plugins = ("support.integration_fixtures",)

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "dispatcher-alerts.yml"
RULES_TESTS = CONTRIB / "prometheus" / "dispatcher-alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "webhook-dispatcher.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
METRIC_NAME = re.compile(r"\bdispatcher_[a-z0-9_]+\b")
# Suffixes Prometheus derives from a family's type.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _rule_exprs() -> list[str]:
    return re.findall(
        r"^\s+expr: (?:\|\n)?(.*?)(?=^\s+(?:for|labels):)", RULES.read_text(), re.M | re.S
    )


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _named_metrics() -> set[str]:
    text = "\n".join([*_rule_exprs(), *_dashboard_exprs()])
    return set(METRIC_NAME.findall(text))


def _exported(metrics_text: str) -> dict[str, set[str]]:
    """Every series name /metrics can carry -> the label names seen on it."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def _sample(metrics_text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# --------------------------------------------------------------------------- the files


def test_the_files_name_the_metrics_they_are_about() -> None:
    exprs = _rule_exprs()
    assert len(exprs) == RULES.read_text().count("- alert:") >= 10
    named = _named_metrics()
    for wanted in (
        "dispatcher_attempts_total",  # delivery rate and outcomes
        "dispatcher_delivery_latency_seconds_bucket",  # fan-out to delivery
        "dispatcher_outbox_oldest_age_seconds",  # commit to fan-out
        "dispatcher_oldest_due_age_seconds",  # backlog age
        "dispatcher_dlq_size",
        "dispatcher_webhooks_disabled",
        "dispatcher_listener_reconnects_total",
        "dispatcher_integrations",
        "dispatcher_token_refreshes_total",
        "dispatcher_integration_checks_total",
    ):
        assert wanted in named, wanted


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TESTS.name],
        cwd=RULES_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: wrap each query (Grafana variables substituted).
    assert PROMTOOL is not None
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_dashboard_exprs()):
        promql = expr.replace("$__rate_interval", "5m").replace("$job", ".*")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(promql)}"]
    rules = tmp_path / "dashboard.yml"
    rules.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_importable_grafana_json() -> None:
    dash = _dashboard()
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


# --------------------------------------------------------------------------- a live daemon


async def test_every_metric_the_files_name_is_exported_by_a_live_daemon(
    conn, receiver, start_daemon
) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/hook"), ["*"])
    running = await start_daemon(metrics_address=f"127.0.0.1:{reserved_port()}")
    assert running.app.health is not None
    await hostdb.publish(conn, "job.created", {"n": 1}, org)
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)

    deadline = time.monotonic() + 30
    while True:
        text = await _scrape(running.app.health.port)
        count = _sample(text, "dispatcher_delivery_latency_seconds_count")
        if (count or 0) >= 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert count == 1, "the successful delivery was not counted in the latency histogram"

    exported = _exported(text)
    missing = sorted(name for name in _named_metrics() if name not in exported)
    assert missing == [], f"named in contrib/ but not in /metrics: {missing}"
    # The labels the files select or group by exist on those series.
    assert {"outcome"} <= exported["dispatcher_attempts_total"]
    assert {"le"} <= exported["dispatcher_delivery_latency_seconds_bucket"]
    assert {"outcome"} <= exported["dispatcher_token_refreshes_total"]
    assert {"status"} <= exported["dispatcher_integration_checks_total"]
    assert {"health_status"} <= exported["dispatcher_integrations"]


async def test_latency_counts_from_the_deliverys_creation_not_the_attempt(
    conn, receiver, start_daemon
) -> None:
    # A delivery row created 90 s ago (e.g. while every replica was down): its latency is
    # ~90 s (bucket le=300, not le=60), not the few milliseconds of the HTTP attempt.
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/late"), ["*"])
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, created_at)"
        " VALUES (%s, %s, 'job.created', '{}', %s, '{}', '{}', now() - interval '90 seconds')",
        (org, hook["id"], receiver.url("/late")),
    )
    running = await start_daemon()
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    deadline = time.monotonic() + 30
    while (buckets := _buckets(running.app.metrics.delivery_latency))["+Inf"] < 1:
        assert time.monotonic() < deadline, "the delivery was not counted"
        await asyncio.sleep(0.05)
    assert buckets["+Inf"] == 1
    assert buckets["60"] == 0
    assert buckets["300"] == 1


def _buckets(histogram: Any) -> dict[str, float]:
    return {
        _le(s.labels["le"]): s.value
        for m in histogram.collect()
        for s in m.samples
        if s.name.endswith("_bucket")
    }


def _le(text: str) -> str:
    return text if text == "+Inf" else f"{float(text):g}"


async def test_outbox_age_and_integration_gauges_read_the_database(conn, db_dsn) -> None:
    org = await hostdb.create_org(conn)
    for health in ("healthy", "healthy", "degraded", "unhealthy", "unknown"):
        integ = await create_integration(conn, org)
        await conn.execute(
            "UPDATE integrations SET health_status = %s WHERE id = %s", (health, integ)
        )
    await create_integration(conn, org, status="error")
    deleted = await create_integration(conn, org)
    await conn.execute(
        "UPDATE integrations SET health_status = 'unhealthy', deleted_at = now() WHERE id = %s",
        (deleted,),
    )
    expired = await create_integration(conn, org)
    tok = await create_token(conn, org, expired, access="a", refresh="r", expires_in=-60)
    await conn.execute(
        "UPDATE integration_oauth_tokens SET status = 'expired' WHERE id = %s", (tok,)
    )
    failing = await create_integration(conn, org, status="inactive")
    tok = await create_token(conn, org, failing, access="a", refresh="r", expires_in=60)
    await conn.execute(
        "INSERT INTO dispatcher.oauth_refresh_state (token_id, attempts, last_error_kind) "
        "VALUES (%s, 2, 'transient')",
        (tok,),
    )

    cur = await conn.execute(query("gauges_integrations"))
    row = await cur.fetchone()
    assert dict(row) == {
        "healthy": 2,
        "degraded": 1,
        "unhealthy": 1,
        "unknown": 2,  # the one created unknown, and the expired token's integration
        "in_error": 1,
        "tokens_failing": 1,
        "tokens_expired": 1,
    }

    cur = await conn.execute(query("gauges_outbox_age"))
    assert (await cur.fetchone())["oldest_seconds"] == 0
    await conn.execute("ALTER TABLE dispatcher.outbox DISABLE TRIGGER USER")
    await hostdb.publish(conn, "job.created", {}, org)
    await conn.execute("UPDATE dispatcher.outbox SET created_at = now() - interval '75 seconds'")
    cur = await conn.execute(query("gauges_outbox_age"))
    assert 75 <= (await cur.fetchone())["oldest_seconds"] < 120


async def test_token_refresh_outcomes_are_counted(conn, make_worker) -> None:
    before = dict(integration_stats.TOKEN_REFRESHES)
    async with OAuthServer() as oauth:
        org = await hostdb.create_org(conn)
        oauth.add_client("client-a", "secret-a", "client_secret_post")
        config = {
            "client_id": "client-a",
            "client_secret": "secret-a",
            "token_url": oauth.token_url,
        }
        for _ in range(2):
            access, refresh = oauth.issue("client-a")
            integ = await create_integration(conn, org, config=config)
            await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=30)
        worker = await make_worker()
        assert await worker.refresh_due() == 2

        oauth.script_token(InvalidGrant("Token has been expired or revoked."))
        access, refresh = oauth.issue("client-a")
        integ = await create_integration(conn, org, config=config)
        await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=30)
        assert await worker.refresh_due() == 1
    after = integration_stats.TOKEN_REFRESHES
    assert after["refreshed"] - before.get("refreshed", 0) == 2
    assert after["expired"] - before.get("expired", 0) == 1
    assert sum(after.values()) - sum(before.values()) == 3
