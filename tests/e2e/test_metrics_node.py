"""The fleet view on a booted node of its own (issue 15): Debian's
prometheus-node-exporter serves the agent's textfile (found by the default
`textfile = "auto"`, no policy edit), Debian's prometheus scrapes it with the
rules the package ships (their `for:` shortened), and its HTTP API shows a
drift, the drift alert pending and, once the agent stops, the stale alert firing.

Its own node (like test_confirm.py): the scenario's node must not carry a
Prometheus server, and this one needs no K3s.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import booted_node
from tests.e2e.node import sh, wait_until
from tests.e2e.nspawn import NspawnNode
from tests.e2e.scenario import diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.root]

INTERVAL = 2  # the agent's; stale = no cycle for 3 x INTERVAL
SCRAPE = 1  # Prometheus's scrape and rule evaluation interval in the node
KEY = "net.ipv4.conf.all.log_martians"
TEXTFILE = "/var/lib/prometheus/node-exporter/k3s_agentd.prom"
SHIPPED_RULES = "/usr/share/k3s-hardening-agent/prometheus/k3s-agentd.rules.yml"
# Overridden `for:`: drift stays pending (long), staleness fires at once.
FOR = {"K3sAgentdNodeDrifted": "1h", "K3sAgentdStale": "0s"}

POLICY = f"""# e2e metrics: audit, so a drift stays a drift
version = 1
extends = "none"
mode = "audit"
interval = {INTERVAL}
confirm_timeout = 0
[controls.sysctl]
persist = false  # audit never writes sysctl.d: the runtime value is the only item
[controls.sysctl.items."{KEY}"]
value = 1
"""
PROMETHEUS_YML = f"""global:
  scrape_interval: {SCRAPE}s
  evaluation_interval: {SCRAPE}s
rule_files: [/etc/prometheus/k3s-agentd.rules.yml]
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:9100"]}}]
"""
QUERY = (
    "import sys, urllib.request\n"
    "reply = urllib.request.urlopen('http://127.0.0.1:9090/api/v1/' + sys.argv[1], timeout=5)\n"
    "print(reply.read().decode())\n"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NspawnNode]:
    extra = ("prometheus", "prometheus-node-exporter")
    with booted_node(tmp_path_factory, "e2e-metrics", "k3s-e2e-metrics", False, extra) as booted:
        yield booted


def api(node: NspawnNode, path: str) -> Any:
    done = node.run(["python3", "-c", QUERY, path], check=False, timeout=15)
    if done.returncode != 0:
        return None  # Prometheus not up (yet)
    reply = json.loads(done.stdout)
    assert reply["status"] == "success", reply
    return reply["data"]


def query(node: NspawnNode, expr: str) -> list[dict[str, Any]]:
    return (api(node, "query?query=" + urllib.parse.quote(expr)) or {}).get("result", [])


def alert_state(node: NspawnNode, name: str) -> str:
    alerts = (api(node, "alerts") or {}).get("alerts", [])
    return ",".join(sorted(a["state"] for a in alerts if a["labels"]["alertname"] == name))


def test_node_exporter_prometheus_and_the_shipped_rules(node: NspawnNode) -> None:
    try:
        _scenario(node)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{diagnostics(node)}") from None


def _scenario(node: NspawnNode) -> None:
    # Prometheus with the package's rules, `for:` shortened (the rules file is the installed one)
    rules = yaml.safe_load(node.run(["cat", SHIPPED_RULES]).stdout)
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        if rule["alert"] in FOR:
            rule["for"] = FOR[rule["alert"]]
    node.copy_in(yaml.safe_dump(rules).encode(), "/etc/prometheus/k3s-agentd.rules.yml", 0o644)
    node.copy_in(PROMETHEUS_YML.encode(), "/etc/prometheus/prometheus.yml", 0o644)
    sh(node, "systemctl restart prometheus prometheus-node-exporter")

    # the agent: compliant first, textfile = "auto" (no [metrics] in the policy)
    sh(node, f"sysctl -qw {KEY}=1")
    node.copy_in(POLICY.encode(), "/etc/k3s-agentd/policy.toml", 0o600)
    sh(node, "systemctl restart k3s-agentd")  # enabled: it booted with the shipped policy
    wait_until(lambda: sh(node, f"test -s {TEXTFILE}", check=False).returncode == 0, 30, "the textfile")
    assert sh(node, f"stat -c %a {TEXTFILE}").stdout.strip() == "644"
    checked = sh(node, f"promtool check metrics < {TEXTFILE}", check=False)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked

    info = wait_until(lambda: query(node, "k3s_agentd_info"), 60, "k3s_agentd_info in Prometheus")
    assert info[0]["metric"]["mode"] == "audit" and info[0]["metric"]["job"] == "node", info
    drift = 'sum(k3s_agentd_findings{status="drift"})'
    wait_until(
        lambda: query(node, drift) and query(node, drift)[0]["value"][1] == "0", 30, "no drift scraped"
    )
    assert not alert_state(node, "K3sAgentdNodeDrifted")

    # drift: the metric changes, the drift alert goes pending (its `for:` is an hour)
    sh(node, f"sysctl -qw {KEY}=0")
    drifted = time.monotonic()
    item = f'k3s_agentd_item_status{{item="{KEY}",status="drift"}}'
    wait_until(lambda: query(node, item), 30, "the drifted item in Prometheus")
    assert query(node, drift)[0]["value"][1] == "1"
    wait_until(lambda: alert_state(node, "K3sAgentdNodeDrifted") == "pending", 30, "the drift alert pending")
    pending = time.monotonic() - drifted
    assert not alert_state(node, "K3sAgentdStale")

    # the agent stops: node_exporter keeps serving its last file, the stale alert fires
    sh(node, "systemctl stop k3s-agentd")
    stopped = time.monotonic()
    wait_until(lambda: alert_state(node, "K3sAgentdStale") == "firing", 60, "the stale-agent alert firing")
    # not at once: 3 intervals after the last cycle, which ended at most an interval
    # (and SIGTERM's wait) before `stopped`
    assert time.monotonic() - stopped >= INTERVAL
    assert sh(node, f"test -s {TEXTFILE}", check=False).returncode == 0
    sys.stderr.write(
        f"\n  drift -> alert pending {pending:.1f}s; agent stopped -> stale alert firing "
        f"{time.monotonic() - stopped:.1f}s (interval {INTERVAL}s, scrape {SCRAPE}s)\n"
    )
