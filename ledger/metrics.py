"""Prometheus metrics and structured JSON logs of one replica process.

Each replica serves its metrics over HTTP on its own ``metrics_port`` (from
the topology), at ``/metrics``. Every series carries the labels ``cluster``
and ``replica``. Names follow Prometheus conventions (units last, counters
end in ``_total``).

Logs are one JSON object per line on stderr: ``ts``, ``level``, ``msg``,
``replica``, ``ballot`` (the replica's current ballot) and any extra fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
FSYNC_BUCKETS_S = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8190, 16384, 65536)
ROLES = ("follower", "pre_candidate", "candidate", "leader")


WRITE_SET_OUTCOMES = ("sent", "installed", "executed", "refused")


class ReplicaMetrics:
    """All series of one replica, in a registry of its own."""

    def __init__(self, cluster_id: str, replica_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"cluster": cluster_id, "replica": replica_id}
        names = list(labels)
        r = self.registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, names + list(extra), registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, names + list(extra), registry=r)

        def histogram(name: str, doc: str, buckets, extra: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, doc, names + list(extra), buckets=buckets, registry=r)

        self._labels = labels
        self._children: dict = {}  # metric -> its series labelled with this replica only
        self.role = gauge("ledger_replica_role", "1 for the replica's current role", ("role",))
        self.ballot_round = gauge("ledger_ballot_round", "round of the replica's current ballot")
        self.chosen_index = gauge("ledger_chosen_index", "slots below this are chosen")
        self.applied_index = gauge("ledger_applied_index", "slots below this are applied")
        self.is_leader = gauge("ledger_is_leader", "1 if this replica leads")
        self.queue_requests = gauge("ledger_proposal_queue_requests", "client writes waiting to be proposed")
        self.proposals = counter("ledger_proposals_total", "slot values proposed by this replica")
        self.batch_requests = histogram(
            "ledger_batch_requests", "client requests grouped into one slot", BATCH_BUCKETS
        )
        self.batch_events = histogram(
            "ledger_batch_events", "ledger events (accounts, transfers, kv ops) in one slot", BATCH_BUCKETS
        )
        self.commit_latency = histogram(
            "ledger_commit_latency_seconds", "from proposing a slot to applying it", LATENCY_BUCKETS_S
        )
        self.request_latency = histogram(
            "ledger_request_latency_seconds", "client write requests, arrival to answer", LATENCY_BUCKETS_S
        )
        self.fsync_latency = histogram(
            "ledger_storage_step_seconds",
            "one storage transaction: a persist (with its fsync), or an apply (with its commit when it commits)",
            FSYNC_BUCKETS_S
        )
        self.peer_rtt = histogram(
            "ledger_peer_rtt_seconds", "heartbeat round trip to a peer", LATENCY_BUCKETS_S, ("peer",)
        )
        self.peer_dropped_frames = counter(
            "ledger_peer_dropped_frames_total", "frames not sent: connection down or too many bytes unsent", ("peer",)
        )
        self.peer_connected = gauge("ledger_peer_connected", "1 if the stream to the peer is up", ("peer",))
        self.elections = counter("ledger_elections_total", "times this replica became a candidate")
        self.leader_changes = counter("ledger_leader_changes_total", "times the known leader changed")
        self.errors = counter(
            "ledger_errors_total", "requests answered with an error, by gRPC status", ("code",)
        )
        self.event_results = counter(
            "ledger_event_results_total", "per-event ledger result codes answered", ("result",)
        )
        self.wire_errors = counter("ledger_wire_errors_total", "peer frames refused by the wire decoder")
        self.write_sets = counter(
            "ledger_write_sets_total",
            "large slots' write sets (ledger.write_set), by outcome: sent (leader), installed, "
            "executed (applied by running the batch: none arrived in time, or another base), refused",
            ("outcome",),
        )
        self._role_seen = ""
        # Create every unlabelled-beyond-replica series now, so that each one
        # is exported from the start (a follower also shows its commit latency
        # histogram, empty), and dashboards never miss a series.
        for metric in (
            self.ballot_round, self.chosen_index, self.applied_index, self.is_leader, self.queue_requests,
            self.proposals, self.batch_requests, self.batch_events, self.commit_latency,
            self.request_latency, self.fsync_latency, self.elections, self.leader_changes, self.wire_errors,
        ):
            self.labels(metric)
        for name in ROLES:
            self.labels(self.role, role=name)
        for outcome in WRITE_SET_OUTCOMES:
            self.labels(self.write_sets, outcome=outcome)

    def labels(self, metric, **extra):
        if extra:
            return metric.labels(**self._labels, **extra)
        # The replica-only series are asked for on every request: keep them.
        child = self._children.get(metric)
        if child is None:
            child = self._children[metric] = metric.labels(**self._labels)
        return child

    def set_role(self, role: str) -> None:
        if role == self._role_seen:
            return
        for name in ROLES:
            self.labels(self.role, role=name).set(1 if name == role else 0)
        self.labels(self.is_leader).set(1 if role == "leader" else 0)
        if role == "candidate":
            self.labels(self.elections).inc()
        self._role_seen = role

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        self._http = start_http_server(port, addr=host, registry=self.registry)

    def stop_serving(self) -> None:
        http = getattr(self, "_http", None)
        if http:
            server, thread = http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None


class JsonFormatter(logging.Formatter):
    def __init__(self, replica_id: str, ballot: Callable[[], str]) -> None:
        super().__init__()
        self.replica_id = replica_id
        self.ballot = ballot

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "replica": self.replica_id,
            "ballot": self.ballot(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(replica_id: str, ballot: Callable[[], str], level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(replica_id, ballot))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger("ledger")


def log(logger: logging.Logger, level: int, msg: str, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
