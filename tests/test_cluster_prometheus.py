"""A real Prometheus server scrapes every replica's metrics and answers a query back.

Goal: the metrics endpoints speak the Prometheus exposition format well enough
for Debian's `prometheus` to scrape them, and a series (the leader's role and
the applied index of each replica) can be queried from Prometheus. Skipped
when the `prometheus` binary is not installed (make test installs it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster_harness import LocalCluster, free_ports, wait_until

pytestmark = pytest.mark.timeout(180)

PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus package is not installed")
def test_prometheus_scrapes_and_queries_replica_metrics():
    cluster = LocalCluster(3, cluster_id="promtest")
    workdir = Path(tempfile.mkdtemp(prefix="ledger-prom-"))
    prom = None
    try:
        cluster.start()
        with cluster.client() as c:
            c.kv_put(b"scraped", b"yes")
        targets = ", ".join(f'"127.0.0.1:{p}"' for p in cluster.metrics_ports.values())
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: ledger\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        (port,) = free_ports(1)
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"),
        )

        def query(expr: str):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            answer = json.loads(urllib.request.urlopen(url, timeout=2).read())
            return answer["data"]["result"] if answer.get("status") == "success" else None

        leaders = wait_until(lambda: query('ledger_replica_role{role="leader"} == 1'), 60,
                             "Prometheus to scrape a leader")
        assert len(leaders) == 1
        assert leaders[0]["metric"]["cluster"] == "promtest"
        applied = wait_until(lambda: (r := query("ledger_applied_index")) and len(r) == 3 and r, 60,
                             "the applied index of all three replicas")
        assert {r["metric"]["replica"] for r in applied} == set(cluster.ids)
        assert all(float(r["value"][1]) >= 1 for r in applied)
    finally:
        if prom is not None:
            prom.send_signal(signal.SIGKILL)
            prom.wait(timeout=10)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
