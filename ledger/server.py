"""The replica process: one asyncio event loop, one driver task, gRPC all round.

    python -m ledger.server --topology cluster/topologies/one-city.toml --id r2 [--data DIR]

Wiring (imports point one way: this module wires, nothing imports it back)::

    gRPC handlers (ledger.api) --submit/read--> Driver --propose/step/tick--> consensus.Replica
    peers' streams (ledger.server_peers) --deliver------^        |
                                                                  v ready()
        0. send early        the leader's accepts and heartbeats (sendable_before_persist)
        1. persist           ledger.storage.persist (one synced txn of the acceptor environment)
        2. send              PeerTransport.send: everything that waited for the persist
        3. apply             ledger.storage.apply, in the apply thread, behind the turns
                             (the state environment: its own writer), one at a time in
                             slot order; the writes of our slots are answered as soon as
                             their results are computed, reads once the apply committed
    (an apply whose entries earlier turns stored starts with the turn's persist)

The driver is the only code that touches the ``Replica``. It runs in turns;
a turn starts when something arrived (a peer message, a client write or read)
or the next tick is due:

    ticks from the monotonic clock (every tick that elapsed: never skipped, the
    leader lease counts them; and before the messages, so that a message that
    waited through a stall is stamped no earlier than it arrived, which the
    followers' stickiness, and so the lease, relies on) -> step every queued peer message -> propose ALL
    queued client writes as ONE slot value (group commit; split only at the
    batch limits) -> register linearizable reads -> ready(): persist, send,
    apply, answer.

While step N's fsync runs in the storage thread, requests keep arriving and
queue up for step N+1, so one fsync covers everything that arrived meanwhile;
and since applying has its own writer, accepting slot N+1 never waits for
slot N's apply to commit.

Limits: the proposal queue holds at most ``QUEUE_EVENTS_MAX`` events; beyond
that a write is answered RESOURCE_EXHAUSTED at once. A write whose deadline
passes before it is proposed is never proposed.

Snapshots and membership (issue 5): after applying, the driver compacts the
log every ``[snapshot] every_slots`` slots (``_maybe_compact``); when the core
says peers no longer hold what it lacks (``Ready.snapshot_needed_from``), a
background task streams the peer's snapshot into a spool file
(``_fetch_snapshot``) and the next turn installs it (``_install_received_snapshot``)
before anything else. Membership changes are queued for the turn like
leadership transfers; a leader outside the primary zone hands leadership to a
caught-up voter there after ``primary_hold_ms`` (``_maybe_move_to_primary_zone``).
Membership values in the log are the core's; they never reach the state machine.

A storage failure (full disk, I/O error) means the step did not happen: the
driver stops (answers FAILED_PRECONDITION to new requests), retries the same
persist or apply with backoff, and only then sends its messages or moves its
applied point, so nothing promised or accepted is ever sent before it is
durable. A leader whose storage fails hands leadership over.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import os
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import grpc
import msgpack
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster import topology as topo
from consensus import Config, Persist, Refused, RefuseReason, Replica, Role
from consensus.membership import MembershipError, is_membership_value
from consensus.messages import Heartbeat, Message, sendable_before_persist
from ledger import commands as cmd
from ledger import digest as digest_mod
from ledger import errors
from ledger import server_auth
from ledger.api_proto import SERVICE_NAMES, pb
from ledger.metrics import ReplicaMetrics, log, setup_logging
from ledger.server_peers import PeerServicer, PeerTransport
from ledger.storage import ReplicaStorage, SnapshotMismatch, StorageError, StorageSyncFailed, StorageUnavailable
from ledger import write_set
from ledger.wire import WriteSet

# ---------------------------------------------------------------- limits

QUEUE_EVENTS_MAX = 262_144  # events waiting to be proposed, all clients together
QUEUE_REQUESTS_MAX = 16_384
# One slot value: well below consensus slot_bytes_max (16 MiB) and the batch
# format's own limit, leaving room for msgpack framing.
SLOT_EVENT_BYTES_MAX = 8 * 1024 * 1024
SLOT_COMMANDS_MAX = cmd.COMMANDS_PER_BATCH_MAX
# Group commit: while this many of our slots are in flight, queued writes wait
# (gathering more company) unless they already fill a slot. A few slots in
# flight keep the pipeline busy; more would only shrink the batches.
SLOTS_INFLIGHT_MAX = 2
SLOT_EVENTS_FULL = 8190
INBOX_MESSAGES_MAX = 100_000  # peer messages waiting for the driver; beyond: dropped
READS_WAITING_MAX = 10_000
EXPIRY_NOOP_INTERVAL_S = 1.0  # idle leader: how often pending expiries get a slot
RPCS_IN_PROGRESS_MAX = QUEUE_REQUESTS_MAX + READS_WAITING_MAX + 1024  # + peers, status, health
STORAGE_RETRY_MIN_S = 0.05
STORAGE_RETRY_MAX_S = 2.0
# Applies of chosen slots run behind the turns, one at a time in slot order
# (``Driver._apply``); a turn that finds more than this many queued waits for
# the oldest, so a replica whose applies fall behind slows its consensus
# instead of holding ever more chosen slots in memory.
APPLIES_QUEUED_MAX = 4
# An apply leaves the state's transaction open and the next goes on in it
# (``ReplicaStorage.apply(commit=False)``) until APPLY_COMMIT_INTERVAL_S has
# passed since the first one it holds, APPLY_UNCOMMITTED_BYTES_MAX of slot
# values are in it, or something needs the committed state (a linearizable
# read, a snapshot, stopping). One commit then writes each page those applies
# touched once: many single-transfer slots share the account pages, and the
# acceptor's fsyncs meet fewer of the state's. Writes are answered from the
# apply, before its commit, as before; linearizable reads after it. Measured
# here with 64 single-transfer callers over streams (2 rounds of 2 runs each):
# 0 ms (a commit per apply) 3,003-3,657/s, 20 ms 3,302-3,591/s, 100 ms
# 3,575-4,396/s, 300 ms 3,759-3,889/s. A crash loses nothing of it: the log
# holds the slots, applied again at restart. LEDGER_APPLY_COMMIT_MS=0 commits
# every apply. Batches commit on their own (256 KiB of values is ~2,000
# transfers): a transaction holding two 8,000-transfer slots cost the
# leader's apply ~35% more CPU per transfer than one slot each (user time of
# its apply thread 34.3 us against 23-28 us; with this limit 29-31 us).
APPLY_COMMIT_INTERVAL_S = float(os.environ.get("LEDGER_APPLY_COMMIT_MS", "100")) / 1000.0
APPLY_UNCOMMITTED_BYTES_MAX = 256 * 1024
# A leader proposes no new slot while this many bytes of chosen slot values
# wait for or run their apply (more than one 8,000-transfer batch): with
# batches the apply is the bottleneck, and proposing, persisting and sending
# further slots meanwhile only competes with it for the interpreter. The end
# of every apply wakes the turn. Measured here, 3 rounds alternating, without
# then with: 4 x 8,000 26,327, 26,260, 29,048-31,722/s against 24,743,
# 39,142, 38,529-44,953/s; 64 stream callers 3,177, 3,608, 4,301/s against
# 3,765, 4,150, 5,369/s; 4 x 1,000 17,024-25,131/s against 21,794-25,607/s.
APPLY_BACKLOG_BYTES_MAX = 1536 * 1024
SYNC_FAILED_HANDOVER_S = 0.05  # time for the TimeoutNow to leave before exit 70
KEEPALIVE_MAX_S = 2.0  # longest storage step during which a leader resends heartbeats
SERVER_MESSAGE_BYTES_MAX = 64 * 1024 * 1024
# What one gRPC call may send us: the largest public request plus protobuf
# framing (peer frames come on the peer port). server_auth refuses a public
# request above PUBLIC_REQUEST_BYTES_MAX before parsing it as well.
SERVER_RECEIVE_BYTES_MAX = server_auth.PUBLIC_REQUEST_BYTES_MAX + 64 * 1024
# HTTP/2 streams (calls in progress) per connection: one client's connection
# cannot take more than this share of RPCS_IN_PROGRESS_MAX; further calls wait
# on the client's side until one finishes.
STREAMS_PER_CONNECTION_MAX = 1024
# The storage step (fsync + apply) runs in its own thread so that the event
# loop keeps reading requests during the fsync: they gather for the next
# slot (group commit). Measured here with 16-64 clients that gives 1.7-2.4x
# the throughput of running the step on the loop thread (LEDGER_STORAGE_THREAD=0).
STORAGE_IN_THREAD = os.environ.get("LEDGER_STORAGE_THREAD", "1") != "0"
# Snapshots (see ``ledger.storage``: the state tables are the snapshot).
SNAPSHOT_SERVES_MAX = 2  # peers streaming our snapshot at once
# Test hook (integration tests cut a transfer in the middle): pause between chunks sent.
SNAPSHOT_CHUNK_DELAY_S = float(os.environ.get("LEDGER_SNAPSHOT_CHUNK_DELAY_S", "0"))
SNAPSHOT_RETRY_S = 0.5  # after a failed transfer, wait this long before the next
SNAPSHOT_FETCH_TIMEOUT_S = 3600.0  # one whole transfer; a broken stream fails sooner
# A member is caught up when its chosen point is within this many slots of the
# leader's (promotion and primary-zone moves wait for it).
CAUGHT_UP_SLOTS = 64
# A peer is healthy while it acknowledged one of the last few heartbeat rounds.
HEALTHY_HEARTBEAT_ROUNDS = 5
TOPOLOGY_RELOAD_INTERVAL_S = 1.0  # at most this often, when an unknown member appears

# Write sets (``ledger.write_set``): a leader sends the rows it wrote for each
# slot value this large, and a follower holds such a slot, once chosen, until
# its write set is there (installing it costs about a third of running the
# batch), but no longer than WRITE_SET_WAIT_S and for at most
# DEFERRED_SLOTS_MAX slots; then it runs the batch itself. Smaller slots are
# cheaper to run than to ship.
WRITE_SET_VALUE_BYTES_MIN = 64 * 1024  # about 500 transfers
WRITE_SET_WAIT_S = 1.0
DEFERRED_SLOTS_MAX = 32
WRITE_SETS_HELD_BYTES_MAX = 256 * 1024 * 1024  # received, not yet installed
WRITE_SET_BACKLOG_BYTES_MAX = 16 * 1024 * 1024  # a link with more unsent bytes gets none
WRITE_SETS_AHEAD_MAX = 4096  # slots past our applied point a held write set may be for

COMMAND_OVERHEAD_BYTES = 64  # msgpack framing of one command, generously
assert SLOT_EVENT_BYTES_MAX + COMMAND_OVERHEAD_BYTES * SLOT_COMMANDS_MAX < cmd.BATCH_BYTES_MAX
assert cmd.EVENTS_PER_COMMAND_MAX * 128 <= SLOT_EVENT_BYTES_MAX



class _Wake:
    """``asyncio.Event`` for the driver loop's one waiter, whose timed wait
    needs no task per turn (``asyncio.wait_for`` on ``Event.wait`` makes one)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float) -> None:
        """Until set, or ``timeout`` seconds."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _acks_recently(ls, number: int) -> bool:
    """On the leader (``ls``, the core's leader state, read only): ``number``
    acknowledged one of the last HEALTHY_HEARTBEAT_ROUNDS heartbeat rounds."""
    return number in ls.hb_acked and ls.hb_acked[number] >= ls.hb_seq - HEALTHY_HEARTBEAT_ROUNDS


def _consensus_clock() -> float:
    """Seconds on the clock that drives consensus ticks.

    CLOCK_BOOTTIME keeps counting while the machine is suspended (the
    monotonic clock stops), so a leader resumed after a suspend delivers every
    tick it missed and sees its lease expired before it serves a read.
    """
    return time.clock_gettime(_BOOTTIME)


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


@dataclass(slots=True)


class PendingWrite:
    command: Any  # a ledger.commands command
    events: int
    nbytes: int
    future: asyncio.Future
    arrived: float
    deadline: float | None  # monotonic; None: no deadline
    abandoned: bool = False


@dataclass(slots=True)
class Inflight:
    value: bytes
    writes: list[PendingWrite]
    proposed_at: float


@dataclass(slots=True)
class StepResult:
    """What applying one ready's committed entries produced, by slot."""

    results: dict[int, list] = field(default_factory=dict)


class Driver:
    """The single owner of the consensus replica; see the module docstring."""

    def __init__(
        self,
        topology: topo.Topology,
        spec: topo.ReplicaSpec,
        storage: ReplicaStorage,
        apply_value: Callable[[Any, int, bytes], list],
        metrics: ReplicaMetrics,
        logger: logging.Logger,
        seed: int | None = None,
    ) -> None:
        self.topology = topology
        self.spec = spec
        self.storage = storage
        self.apply_value = apply_value
        self.metrics = metrics
        self.logger = logger
        # The initial voters are the cluster's first membership; a replica that
        # joins later starts as a learner of them and learns the current
        # membership from the log or from a snapshot.
        voters = topology.initial_voters
        learners = (spec.number,) if spec.number not in voters else ()
        self.config = Config(replica_id=spec.number, replica_ids=voters, learner_ids=learners)
        durable = storage.load()
        self.replica = Replica(self.config, durable, random.Random(seed if seed is not None else os.urandom(16)))
        # Test hooks for clock faults (chaos suite): LEDGER_CLOCK_RATE runs this
        # replica's tick clock faster or slower (1.05 = 5 % fast);
        # LEDGER_WALL_CLOCK_OFFSET_S shifts the wall clock used for batch
        # timestamps (the state machine keeps timestamps increasing anyway).
        self.clock_rate = float(os.environ.get("LEDGER_CLOCK_RATE", "1"))
        self.wall_offset_ns = int(float(os.environ.get("LEDGER_WALL_CLOCK_OFFSET_S", "0")) * 1e9)
        assert 0.5 < self.clock_rate < 2.0, "LEDGER_CLOCK_RATE must be within (0.5, 2)"
        self.tick_s = topology.tick_ms / 1000.0 / self.clock_rate
        self.applied_below = durable.applied_below
        self._storage_thread = ThreadPoolExecutor(1, thread_name_prefix="storage")  # persists
        self._apply_thread = ThreadPoolExecutor(1, thread_name_prefix="apply")
        self._applies: collections.deque[asyncio.Task] = collections.deque()  # in slot order
        self._apply_backlog_bytes = 0  # slot values of the applies queued or running
        self._handover_wanted = False  # an apply failed on the leader: hand over next turn
        self._uncommitted: list[tuple[int, bytes]] = []  # slots in the open apply transaction
        self._uncommitted_bytes = 0
        self._uncommitted_since = 0.0
        self._commit_wanted = False
        self._commit_timer: asyncio.TimerHandle | None = None
        self._wake = _Wake()
        self._inbox: list[Message] = []
        self._inbox_foreign = False  # the inbox holds a message not from the leader
        self._step_started: float | None = None  # monotonic start of the storage step running now
        self._queue: list[PendingWrite] = []
        self._queue_events = 0
        self._inflight: dict[int, Inflight] = {}
        self._read_tokens = itertools.count(1)
        self._reads_to_register: list[int] = []
        self._reads: dict[int, asyncio.Future] = {}
        self._reads_waiting: list[tuple[int, int]] = []  # (index, token) until applied
        self._transfer_requests: list[tuple[int, asyncio.Future]] = []
        self._storage_failures: dict[str, str] = {}  # "persist"/"apply" -> why it fails
        self._stopping = False
        self._last_leader = 0
        self._last_timestamp_ns = 0
        self._last_proposal_at = time.monotonic()
        self._snapshot_logged_at = -1e9
        self._last_heartbeats: dict[int, Heartbeat] = {}  # peer -> the last Heartbeat sent to it
        self._write_sets: dict[int, WriteSet] = {}  # slot -> a leader's write set, until applied
        self._write_set_bytes = 0
        self._deferred: list[tuple[int, bytes]] = []  # chosen slots held for their write set
        self._deferred_at: dict[int, float] = {}  # slot -> when it started waiting
        self.has_pending_expiries: Callable[[Any, int], bool] = lambda tables, now_ns: False
        self.transport: PeerTransport | None = None
        # Told when the replica stops or resumes serving (health checking).
        self.on_serving_changed: Callable[[bool], None] = lambda serving: None
        self._task: asyncio.Task | None = None
        self._keepalive_task: asyncio.Task | None = None
        # Snapshots and compaction.
        self._snapshot_fetch: asyncio.Task | None = None
        self._snapshot_received: tuple[int, int, tuple] | None = None  # index, digest, memberships
        self._snapshot_serving = 0
        self._snapshot_retry_at = 0.0
        self.snapshots_installed = 0
        # Membership changes waiting for the next turn: (kind, number, future).
        self._membership_requests: list[tuple[str, int, asyncio.Future]] = []
        self._topology_reloaded_at = -1e9
        # Primary zone: since when each better-placed voter is healthy and caught up.
        self._primary_ready_since: dict[int, float] = {}
        self._primary_transfer_at = -1e9
        with contextlib.suppress(FileNotFoundError):
            os.remove(storage.incoming_snapshot_path())  # a transfer cut by a crash restarts

    # ------------------------------------------------------------ views

    @property
    def role(self) -> str:
        return self.replica.role.value

    @property
    def leader_spec(self) -> topo.ReplicaSpec | None:
        return self.topology.by_number(self.replica.leader_id) if self.replica.leader_id else None

    def not_leader(self, what: str) -> errors.NotLeader:
        leader = self.leader_spec
        if leader is None:
            return errors.NotLeader(
                f"replica {self.spec.id} cannot {what}: no leader is known yet "
                "(an election is running); retry shortly"
            )
        return errors.NotLeader(
            f"replica {self.spec.id} is not the leader; send this to {leader.id} at {leader.address}",
            leader.id,
            leader.address,
        )

    def _check_serving(self) -> None:
        if self._stopped_reason:
            raise errors.ReplicaStopped(
                f"replica {self.spec.id} stopped accepting requests: {self._stopped_reason}; "
                "it resumes by itself once storage works again"
            )

    # ------------------------------------------------------------ client entry points

    def enqueue(self, command: Any, events: int, nbytes: int, deadline: float | None) -> PendingWrite:
        """Queue ``command`` for ordering; its ``future`` gets the result from
        the state machine, or an exception. Raises at once (nothing queued)
        if this replica cannot take it now.

        The deadline cancels the future (the driver skips a done one); so does
        the caller's cancellation. Either way the write is abandoned: not
        proposed if it was not yet."""
        self._check_serving()
        if deadline is not None and deadline <= time.monotonic():
            raise errors.DeadlineExceeded("the deadline had passed when the request arrived; nothing was done")
        if self.replica.role is not Role.LEADER:
            raise self.not_leader("order writes")
        if (
            self._queue_events + events > QUEUE_EVENTS_MAX
            or len(self._queue) >= QUEUE_REQUESTS_MAX
        ):
            raise errors.Overloaded(
                f"replica {self.spec.id}: the proposal queue is full "
                f"({self._queue_events} events, {len(self._queue)} requests waiting); "
                "back off and retry with the same ids"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        write = PendingWrite(command, events, nbytes, loop.create_future(), now, deadline)
        self._queue.append(write)
        self._queue_events += events
        self._wake.set()
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - now), write.future.cancel)
            write.future.add_done_callback(lambda _f: timer.cancel())
        return write

    async def submit(self, command: Any, events: int, nbytes: int, deadline: float | None) -> Any:
        """Order ``command`` and return its result from the state machine."""
        write = self.enqueue(command, events, nbytes, deadline)
        try:
            return await write.future
        except asyncio.CancelledError:
            write.abandoned = True
            raise errors.DeadlineExceeded(errors.DEADLINE_PASSED) from None
        finally:
            self.metrics.labels(self.metrics.request_latency).observe(time.monotonic() - write.arrived)

    async def read_barrier(self, deadline: float | None) -> None:
        """Return once a linearizable read may run on the local committed state."""
        self._check_serving()
        if self.replica.role is not Role.LEADER:
            raise self.not_leader("serve linearizable reads")
        if len(self._reads) >= READS_WAITING_MAX:
            raise errors.Overloaded(f"replica {self.spec.id}: too many reads waiting; back off")
        token = next(self._read_tokens)
        future = asyncio.get_running_loop().create_future()
        self._reads[token] = future
        self._reads_to_register.append(token)
        self._wake.set()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise errors.DeadlineExceeded("the deadline passed before leadership was confirmed") from None
        finally:
            self._reads.pop(token, None)

    async def transfer_leadership(self, target: topo.ReplicaSpec, deadline: float | None) -> str:
        if self.replica.role is not Role.LEADER:
            raise self.not_leader("transfer leadership")
        if target.number == self.spec.number:
            return self.spec.id
        future = asyncio.get_running_loop().create_future()
        self._transfer_requests.append((target.number, future))
        self._wake.set()
        await future  # raises NotLeader if refused
        # Wait until this replica sees the target lead (or the deadline passes).
        while True:
            if self.replica.leader_id == target.number:
                return target.id
            if deadline is not None and time.monotonic() > deadline:
                raise errors.DeadlineExceeded(
                    f"leadership did not reach {target.id} before the deadline; check its status"
                )
            await asyncio.sleep(self.tick_s)

    # ------------------------------------------------------------ membership

    async def change_membership(self, kind: str, target: topo.ReplicaSpec, deadline: float | None) -> tuple[int, dict]:
        """Propose a membership change; return (slot, members) once it took effect."""
        self._check_serving()
        if self.replica.role is not Role.LEADER:
            raise self.not_leader("change the membership")
        future = asyncio.get_running_loop().create_future()
        self._membership_requests.append((kind, target.number, future))
        self._wake.set()
        slot = await future  # raises if refused
        while self.replica.membership_changing() or self.applied_below <= slot:
            if self.replica.role is not Role.LEADER:
                raise errors.OutcomeUnknown(
                    f"leadership moved while the change at slot {slot} was under way; "
                    "list the members to see whether it took effect"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise errors.DeadlineExceeded(
                    f"the change at slot {slot} had not taken effect by the deadline; list the members"
                )
            await asyncio.sleep(self.tick_s)
        return slot, self.members()

    def _run_membership_requests(self) -> None:
        r = self.replica
        for kind, number, future in self._membership_requests:
            if future.done():
                continue
            try:
                future.set_result(r.change_membership(kind, number))
                log(self.logger, logging.INFO, "membership change proposed", kind=kind, replica=number)
            except MembershipError as e:
                future.set_exception(errors.InvalidArgument(f"membership change refused: {e}"))
            except Refused as e:
                if e.reason is RefuseReason.MEMBERSHIP_CHANGING:
                    future.set_exception(errors.Overloaded(
                        "another membership change is under way (one at a time, effective a window "
                        "of slots after it is chosen); retry in a moment"))
                elif e.reason is RefuseReason.WINDOW_FULL:
                    future.set_exception(errors.Overloaded("the proposal window is full; retry in a moment"))
                else:
                    future.set_exception(self.not_leader(f"change the membership ({e})"))
        self._membership_requests.clear()

    def members(self) -> dict:
        """The current membership, from the leader (only it knows the members' progress)."""
        r = self.replica
        if r.role is not Role.LEADER:
            raise self.not_leader("list the members with their progress")
        m = r.membership
        # Read-only look at the leader's per-peer progress (heartbeat acks).
        ls = r._leader
        peer_chosen = dict(ls.peer_chosen) if ls is not None else {}
        out = []
        for number in sorted(m.members):
            spec = self.topology.by_number(number)
            chosen = r.chosen_below if number == self.spec.number else peer_chosen.get(number, 0)
            out.append({
                "id": spec.id if spec else f"r{number}",
                "address": spec.address if spec else "",
                "kind": "voter" if number in m.voters else "learner",
                "chosen_index": chosen,
                "caught_up": ls is not None and chosen + CAUGHT_UP_SLOTS >= r.chosen_below,
            })
        leader = self.leader_spec
        return {
            "leader_id": leader.id if leader else "",
            "chosen_index": r.chosen_below,
            "changing": r.membership_changing(),
            "members": out,
        }

    def refresh_topology(self, numbers: set[int] | frozenset[int] = frozenset(), force: bool = False) -> None:
        """Re-read the topology file when a member appears that it does not list.

        The file is where a new replica's address comes from: the operator
        lists it (``join = true``) before adding it. This replica's own entry
        (and its data directory) never changes.
        """
        if not force and all(self.topology.by_number(n) is not None for n in numbers):
            return
        now = time.monotonic()
        if not force and now - self._topology_reloaded_at < TOPOLOGY_RELOAD_INTERVAL_S:
            return
        self._topology_reloaded_at = now
        try:
            fresh = topo.load(self.topology.path)
        except (topo.TopologyError, OSError) as e:
            log(self.logger, logging.ERROR, "cannot re-read the topology file", error=str(e))
            return
        if fresh.cluster_id != self.topology.cluster_id:
            log(self.logger, logging.ERROR, "the topology file now names another cluster; ignored")
            return
        merged = {r.number: r for r in self.topology.replicas}
        for r in fresh.replicas:
            if r.number != self.spec.number and r.number not in merged:
                merged[r.number] = r
                log(self.logger, logging.INFO, "new replica in the topology file", replica=r.id, address=r.address)
                if self.transport is not None:
                    self.transport.add_peer(r.number, r.id, r.peer_address, r.address)
        self.topology = replace(self.topology, replicas=tuple(sorted(merged.values(), key=lambda s: s.number)))

    # ------------------------------------------------------------ snapshots

    async def serve_snapshot(self, requester: int, from_slot: int):
        """Stream our applied state to a peer: a header, then row chunks."""
        if self._snapshot_serving >= SNAPSHOT_SERVES_MAX:
            raise errors.Overloaded(f"replica {self.spec.id} is already sending {SNAPSHOT_SERVES_MAX} snapshots")
        self._snapshot_serving += 1
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(1, thread_name_prefix="snapshot-send")
        try:
            with self.storage.snapshot_source() as (index, digest, chunks):
                memberships = self.replica.membership_for_snapshot(index)
                log(self.logger, logging.INFO, "sending a snapshot", peer=requester, index=index,
                    from_slot=from_slot)
                yield msgpack.packb({
                    "index": index,
                    "digest": digest.to_bytes(32, "big"),
                    "memberships": [[e, list(v), list(l)] for e, v, l in memberships],
                })
                while True:
                    chunk = await loop.run_in_executor(reader, next, chunks, None)
                    if chunk is None:
                        break
                    yield chunk
                    if SNAPSHOT_CHUNK_DELAY_S:
                        await asyncio.sleep(SNAPSHOT_CHUNK_DELAY_S)
        finally:
            self._snapshot_serving -= 1
            reader.shutdown(wait=False)

    def _start_snapshot_fetch(self, from_slot: int, peer: int) -> None:
        if self._snapshot_fetch is not None or self._snapshot_received is not None:
            return
        if self.transport is None or self.replica.role is Role.LEADER:
            return
        if time.monotonic() < self._snapshot_retry_at:
            return
        self._snapshot_fetch = asyncio.create_task(self._fetch_snapshot(from_slot, peer), name="snapshot-fetch")

    async def _fetch_snapshot(self, from_slot: int, peer: int) -> None:
        """Receive a peer's snapshot into the spool file; the next turn installs it.

        Any failure (the peer died, the stream broke, we crash) just ends the
        attempt: the core asks again, and the next attempt truncates the spool.
        """
        started = time.monotonic()
        path = self.storage.incoming_snapshot_path()
        header = None
        received = 0
        try:
            stub = self.transport.snapshot_stub(peer)
            if stub is None:
                return
            call = stub.FetchSnapshot(
                pb.SnapshotRequest(cluster_id=self.topology.cluster_id, replica_id=self.spec.number,
                                   from_slot=from_slot),
                timeout=SNAPSHOT_FETCH_TIMEOUT_S,
            )
            with open(path, "wb") as f:
                async for chunk in call:
                    if header is None:
                        header = msgpack.unpackb(chunk.data)
                        if header["index"] < from_slot:
                            call.cancel()
                            return  # the peer's state is no newer than what we lack
                        continue
                    f.write(len(chunk.data).to_bytes(4, "big"))
                    f.write(chunk.data)
                    received += len(chunk.data)
            if header is None:
                return
            memberships = tuple((e, tuple(v), tuple(l)) for e, v, l in header["memberships"])
            self._snapshot_received = (header["index"], int.from_bytes(header["digest"], "big"), memberships)
            log(self.logger, logging.INFO, "snapshot received", peer=peer, index=header["index"],
                bytes=received, seconds=round(time.monotonic() - started, 3))
            self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken stream, a peer gone: the core asks again
            log(self.logger, logging.WARNING, "snapshot transfer failed; it restarts when needed",
                peer=peer, error=f"{type(e).__name__}: {e}"[:300])
            self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_S
        finally:
            self._snapshot_fetch = None

    async def _install_received_snapshot(self) -> None:
        index, digest, memberships = self._snapshot_received
        self._snapshot_received = None
        r = self.replica
        path = self.storage.incoming_snapshot_path()
        try:
            if index <= r.chosen_below or index <= self.applied_below or r.role is Role.LEADER:
                return  # caught up meanwhile by other means
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            await self._commit_applies()  # install_snapshot writes the state too
            await loop.run_in_executor(
                self._apply_thread, self.storage.install_snapshot, path, index, digest, memberships
            )
            r.install_snapshot(index, memberships)
            self.applied_below = index
            self._deferred = []  # all below the snapshot: it is past our chosen point
            self._deferred_at.clear()
            self._take_write_sets(index)
            self.snapshots_installed += 1
            log(self.logger, logging.INFO, "snapshot installed", index=index,
                seconds=round(time.monotonic() - started, 3))
            self.refresh_topology(r.members.known_ids())
        except (SnapshotMismatch, StorageUnavailable) as e:
            log(self.logger, logging.ERROR, "snapshot not installed; it is fetched again", error=str(e))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    async def _maybe_compact(self) -> None:
        """Compact the log once ``every_slots`` applied slots sit in it, keeping
        the newest ``keep_slots`` (so a peer slightly behind catches up from the
        log, not a snapshot). The log then never holds more than every + keep
        applied slots plus the unapplied window."""
        every, keep = self.topology.snapshot_every_slots, self.topology.snapshot_keep_slots
        if self.applied_below - self.storage.log_start < every + keep:
            return
        index = self.applied_below - keep
        memberships = self.replica.membership_for_snapshot(index)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._storage_thread, self.storage.compact_log, index, memberships)
        except StorageUnavailable as e:
            log(self.logger, logging.ERROR, "log compaction failed; retried later", error=str(e))
            return
        self.replica.compact(index)

    # ------------------------------------------------------------ primary zone

    def _maybe_move_to_primary_zone(self) -> None:
        """On the leader: hand leadership to a better-placed voter (a more
        preferred primary zone) once it has been healthy and caught up for
        ``primary_hold_ms`` without a break (hysteresis: a replica that just
        came back, or keeps dropping out, never gets it)."""
        r = self.replica
        ls = r._leader  # read-only look at heartbeat acks and peers' chosen points
        if ls is None or ls.transfer_to or r.membership_changing():
            self._primary_ready_since.clear()
            return
        my_rank = self.topology.zone_rank(self.spec)
        if my_rank == 0:
            return
        now = time.monotonic()
        hold_s = self.topology.primary_hold_ms / 1000.0
        best: tuple[int, int] | None = None  # (rank, number)
        for number in r.membership.voters:
            if number == self.spec.number:
                continue
            spec = self.topology.by_number(number)
            rank = self.topology.zone_rank(spec) if spec else None
            if rank is None or (my_rank is not None and rank >= my_rank):
                continue
            healthy = _acks_recently(ls, number)
            caught_up = ls.peer_chosen.get(number, 0) + CAUGHT_UP_SLOTS >= r.chosen_below
            if not (healthy and caught_up):
                self._primary_ready_since.pop(number, None)
                continue
            since = self._primary_ready_since.setdefault(number, now)
            if now - since >= hold_s and (best is None or (rank, number) < best):
                best = (rank, number)
        if best is None or now - self._primary_transfer_at < hold_s:
            return
        self._primary_transfer_at = now
        target = best[1]
        try:
            r.transfer_leadership(target)
        except Refused:
            return
        self._primary_ready_since.clear()
        log(self.logger, logging.INFO, "moving leadership to the primary zone",
            target=self.topology.by_number(target).id)

    # ------------------------------------------------------------ peer entry point

    def deliver(self, messages: list[Message]) -> None:
        if any(type(m) is WriteSet for m in messages):
            messages = self._keep_write_sets(messages)
            self._wake.set()
            if not messages:
                return
        if len(self._inbox) + len(messages) > INBOX_MESSAGES_MAX:
            return  # overload: dropping is safe, the senders retransmit
        leader = self.replica.leader_id
        if not self._inbox_foreign and any(m.src != leader for m in messages):
            self._inbox_foreign = True
        self._inbox.extend(messages)
        if self._step_started is not None:
            self._ack_heartbeats_now(messages)
        self._wake.set()

    def _keep_write_sets(self, messages: list[Message]) -> list[Message]:
        """Hold the write sets among ``messages`` for their slots' apply; the rest."""
        rest = []
        for m in messages:
            if type(m) is not WriteSet:
                rest.append(m)
            elif (
                self.applied_below <= m.slot < self.applied_below + WRITE_SETS_AHEAD_MAX
                and m.slot not in self._write_sets
                and self._write_set_bytes + len(m.rows) <= WRITE_SETS_HELD_BYTES_MAX
                and self.replica.role is not Role.LEADER
            ):
                self._write_sets[m.slot] = m
                self._write_set_bytes += len(m.rows)
        return rest

    def _applicable(self, committed) -> list[tuple[int, bytes]]:
        """The chosen slots to apply now, in order: ``committed`` after those
        held from earlier turns, up to the first large one whose write set a
        follower is still waiting for (the rest are held)."""
        queue = self._deferred + list(committed) if self._deferred else list(committed)
        r = self.replica
        if r.role is not Role.FOLLOWER or r.leader_id in (None, self.spec.number) or self._stopping:
            self._deferred = []
            self._deferred_at.clear()
            return queue
        now = time.monotonic()
        n = 0
        for slot, value in queue:
            if (
                len(value) >= WRITE_SET_VALUE_BYTES_MIN
                and slot not in self._write_sets
                and slot not in self._inflight
                and len(queue) - n <= DEFERRED_SLOTS_MAX
                and now - self._deferred_at.setdefault(slot, now) < WRITE_SET_WAIT_S
            ):
                break
            n += 1
        self._deferred = queue[n:]
        for slot, _ in queue[:n]:
            self._deferred_at.pop(slot, None)
        return queue[:n]

    def _take_write_sets(self, below: int) -> dict[int, WriteSet]:
        """The held write sets of slots below ``below``, no longer held."""
        if not self._write_sets:
            return {}
        taken = {}
        for slot in [s for s in self._write_sets if s < below]:
            ws = self._write_sets.pop(slot)
            self._write_set_bytes -= len(ws.rows)
            taken[slot] = ws
        return taken

    def _send_write_sets(self, recorded: list) -> None:
        """The leader's write sets of the slots it just applied, to every peer."""
        if self.transport is None or self.replica.role is not Role.LEADER:
            return
        m = self.metrics
        me = self.spec.number
        for slot, base, after, rows in recorded:
            if len(rows) > write_set.WRITE_SET_BYTES_MAX:
                continue
            sent = self.transport.send_write_set(
                lambda dst: WriteSet(me, dst, slot, base.to_bytes(32, "big"), after.to_bytes(32, "big"), rows),
                WRITE_SET_BACKLOG_BYTES_MAX,
            )
            m.labels(m.write_sets, outcome="sent").inc(sent)

    def _ack_heartbeats_now(self, messages: list[Message]) -> None:
        """While a long storage step runs, answer the leader's heartbeats at
        once, as the core will when it steps them after the step: otherwise
        a follower busy applying a large batch looks dead to its leader.

        Only when the core would answer the same (it follows that ballot)
        and nothing but the leader's messages wait before the heartbeat: the
        core then steps the heartbeat before anything that could change its
        mind, renewing the stickiness the leader's lease counts on no earlier
        than this acknowledgement claims."""
        if self._inbox_foreign:
            return
        heartbeat_ack = self.replica.heartbeat_ack
        acks = [a for a in (heartbeat_ack(m) for m in messages if type(m) is Heartbeat) if a is not None]
        if acks:
            self._send(acks)

    # ------------------------------------------------------------ the loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="driver")
        self._keepalive_task = asyncio.create_task(self._keep_followers(), name="keepalive")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._commit_applies(), 5)
        for task in list(self._applies):
            task.cancel()
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        # What is still uncommitted goes, on the thread that began it (the
        # log holds those slots).
        await asyncio.get_running_loop().run_in_executor(self._apply_thread, self.storage.abort_apply)
        self._storage_thread.shutdown(wait=True)
        self._apply_thread.shutdown(wait=True)

    async def _run(self) -> None:
        origin = _consensus_clock()
        ticks_done = 0
        try:
            while not self._stopping:
                next_tick_at = origin + (ticks_done + 1) * self.tick_s
                delay = next_tick_at - _consensus_clock()
                if delay > 0 and not self._has_input():
                    self._wake.clear()
                    await self._wake.wait(delay)
                else:
                    await asyncio.sleep(0)  # never starve the gRPC handlers
                now = _consensus_clock()
                due = int((now - origin) / self.tick_s)
                if due < ticks_done:
                    # The clock went backwards (it should not; a faulty clock
                    # or a fault injector can). Re-anchor instead of freezing
                    # every timer until the clock catches up again.
                    origin = now - ticks_done * self.tick_s
                    due = ticks_done
                await self._turn(due - ticks_done)
                ticks_done = due
        except Exception:
            log(self.logger, logging.CRITICAL, "driver loop crashed", exc_info=True)
            # A broken invariant: crash the process rather than serve wrongly.
            os._exit(70)

    def _has_input(self) -> bool:
        return bool(
            self._inbox
            or (self._queue and self._may_propose())
            or self._reads_to_register
            or self._transfer_requests
            or self._membership_requests
            or self._snapshot_received is not None
        )

    def _may_propose(self) -> bool:
        # Slots already chosen (applied later in this same turn's storage step)
        # no longer count: their commit and the next proposal share one fsync.
        if self._apply_backlog_bytes > APPLY_BACKLOG_BYTES_MAX:
            return False  # the apply's turn (see APPLY_BACKLOG_BYTES_MAX); it wakes us
        chosen_below = self.replica.chosen_below
        unchosen = sum(1 for slot in self._inflight if slot >= chosen_below)
        return unchosen < SLOTS_INFLIGHT_MAX or self._queue_events >= SLOT_EVENTS_FULL

    async def _turn(self, ticks: int) -> None:
        r = self.replica
        if self._handover_wanted:
            # Nothing reached the core since the last turn's ready().
            self._handover_wanted = False
            self._hand_over_leadership()
        if self._snapshot_received is not None:
            await self._install_received_snapshot()
        # Clock first, then the messages that arrived meanwhile, then the
        # timers: after a stall, heartbeats in the backlog keep a follower
        # from starting a needless election (consensus.Replica.advance).
        r.advance(ticks)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            self._inbox_foreign = False
            for m in inbox:
                r.step(m)
        if ticks:
            r.run_timers()
        self._propose_queued()
        self._maybe_propose_expiry_noop()
        for target, future in self._transfer_requests:
            try:
                r.transfer_leadership(target)
                future.set_result(None)
            except Refused as e:
                future.set_exception(self.not_leader(f"transfer leadership ({e})"))
        self._transfer_requests.clear()
        if self._membership_requests:
            self._run_membership_requests()
        if ticks:
            self._maybe_move_to_primary_zone()
        for token in self._reads_to_register:
            r.read(token)
        self._reads_to_register.clear()

        ready = r.ready()
        if ready.snapshot_needed_from is not None:
            if time.monotonic() - self._snapshot_logged_at > 10:
                self._snapshot_logged_at = time.monotonic()
                log(self.logger, logging.INFO, "peers no longer hold slots this replica lacks; "
                    "fetching a snapshot", from_slot=ready.snapshot_needed_from, peer=ready.snapshot_peer)
            self._start_snapshot_fetch(ready.snapshot_needed_from, ready.snapshot_peer)
        if not ready.empty:
            late = ready.messages
            if self.transport is not None and late:
                early = [m for m in late if sendable_before_persist(m)]
                if early:
                    # The leader's accepts leave now: its own disk write
                    # overlaps the followers' (consensus.messages).
                    late = [m for m in late if not sendable_before_persist(m)]
                    self._send(early)
            await self._persist_and_apply(ready, late)
            self._answer(ready)
            if ready.committed and any(is_membership_value(v) for _, v in ready.committed):
                self.refresh_topology(r.members.known_ids())
        elif self._deferred:
            # Chosen slots held for their write sets: one may have come, or waited enough.
            await self._persist_and_apply(ready, [])
        await self._maybe_compact()
        self._observe()

    # ------------------------------------------------------------ proposing

    def _propose_queued(self) -> None:
        r = self.replica
        if not self._queue:
            return
        if r.role is not Role.LEADER:
            self._fail_queue(self.not_leader("order writes"))
            return
        now = time.monotonic()
        while self._queue:
            if not self._may_propose():
                return  # group commit: let more requests gather while slots are in flight
            batch: list[PendingWrite] = []
            event_bytes = 0
            rest_start = 0
            for i, w in enumerate(self._queue):
                if batch and (
                    len(batch) >= SLOT_COMMANDS_MAX
                    or event_bytes + w.nbytes + COMMAND_OVERHEAD_BYTES > SLOT_EVENT_BYTES_MAX
                ):
                    break
                rest_start = i + 1
                if w.abandoned or w.future.done():
                    self._queue_events -= w.events
                    continue
                if w.deadline is not None and w.deadline <= now:
                    self._queue_events -= w.events
                    w.future.cancel()
                    continue
                batch.append(w)
                event_bytes += w.nbytes + COMMAND_OVERHEAD_BYTES
            if not batch:
                del self._queue[:rest_start]
                continue
            timestamp = max(time.time_ns() + self.wall_offset_ns, self._last_timestamp_ns + 1)
            value = cmd.encode_batch(timestamp, [w.command for w in batch])
            try:
                slot = r.propose(value)
            except Refused as e:
                if e.reason is RefuseReason.WINDOW_FULL:
                    return  # keep them queued; the window opens as slots are chosen
                if e.reason is RefuseReason.TOO_LARGE:
                    for w in batch:
                        self._queue_events -= w.events
                        w.future.set_exception(errors.InvalidArgument("the request is too large for one slot"))
                    del self._queue[:rest_start]
                    continue
                self._fail_queue(self.not_leader("order writes"))
                return
            self._last_timestamp_ns = timestamp
            del self._queue[:rest_start]
            for w in batch:
                self._queue_events -= w.events
            self._inflight[slot] = Inflight(value, batch, now)
            self._last_proposal_at = now
            m = self.metrics
            m.labels(m.proposals).inc()
            m.labels(m.batch_requests).observe(len(batch))
            m.labels(m.batch_events).observe(sum(w.events for w in batch))

    def _maybe_propose_expiry_noop(self) -> None:
        """On an idle leader, propose a Noop now and then while pending transfers
        wait to expire: expiry happens at the start of each applied batch."""
        now = time.monotonic()
        if (
            self.replica.role is not Role.LEADER
            or self._queue
            or self._inflight
            or now - self._last_proposal_at < EXPIRY_NOOP_INTERVAL_S
        ):
            return
        self._last_proposal_at = now
        timestamp = max(time.time_ns() + self.wall_offset_ns, self._last_timestamp_ns + 1)
        with self.storage.reader() as tables:
            if not self.has_pending_expiries(tables, timestamp):
                return
        try:
            self.replica.propose(cmd.encode_batch(timestamp, [cmd.Noop()]))
        except Refused:
            return
        self._last_timestamp_ns = timestamp

    def _fail_queue(self, error: errors.LedgerError) -> None:
        for w in self._queue:
            if not w.future.done():
                w.future.set_exception(error)
        self._queue.clear()
        self._queue_events = 0

    # ------------------------------------------------------------ persist, apply, answer

    async def _persist_and_apply(self, ready, late: list[Message]) -> None:
        """Make ``ready`` durable, send ``late`` (the messages that must wait
        for that), and start applying what it commits.

        The persist (promise, accepts, chosen point: the acceptor
        environment) is awaited; the apply (the state environment, which
        has its own writer) runs behind the turn (``_apply``), so the next
        slots are accepted while the chosen ones are applied. An apply
        starts once every entry it applies is stored: at once when they
        were persisted by earlier turns (a follower's acknowledgements then
        leave while it applies), after this persist when it stores one of
        them (a one-replica cluster's slots, a follower catching up).

        A leader records the rows each large slot writes and sends them to
        its peers afterwards; a follower installs such rows instead of
        running the batch (``ledger.write_set``), and may hold chosen slots
        for them (``_applicable``)."""
        committed = self._applicable(ready.committed)
        if committed:
            persisting = {slot for slot, _, _ in ready.persist.accepted}
            if not any(slot in persisting for slot, _ in committed):
                self._start_apply(committed)
                committed = []
        if not ready.persist.empty:
            await self._storage_step(ready.persist)
        self._send(late)
        if committed:
            self._start_apply(committed)
        if len(self._applies) > APPLIES_QUEUED_MAX:
            self._step_started = time.monotonic()
            try:
                await self._wait_applies(APPLIES_QUEUED_MAX)
            finally:
                self._step_started = None

    def _start_apply(self, committed: list[tuple[int, bytes]]) -> None:
        previous = self._applies[-1] if self._applies else None
        nbytes = sum(len(v) for _, v in committed)
        self._apply_backlog_bytes += nbytes
        self._applies.append(asyncio.create_task(self._apply(previous, committed, nbytes), name="apply"))

    async def _wait_applies(self, queued: int) -> None:
        """Until at most ``queued`` applies are queued or running. Called
        within a turn after its persist: an apply that fails meanwhile on a
        leader hands leadership over from here, not from the next turn."""
        while len(self._applies) > queued:
            await asyncio.wait({self._applies[0]}, timeout=self.tick_s)
            if self._handover_wanted:
                # Nothing reached the core since this turn's ready().
                self._handover_wanted = False
                self._hand_over_leadership()

    def _commit_soon(self) -> None:
        """Have the open apply transaction committed now: by the apply queued
        next, by the one running when it ends (``_after_apply``), or by a
        commit of its own."""
        if self._applies:
            self._commit_wanted = True
        elif self._uncommitted:
            self._commit_wanted = True
            self._start_apply([])

    def _commit_due(self) -> None:
        self._commit_timer = None
        if self._uncommitted and not self._applies:
            self._start_apply([])  # else the apply queued sees the age and commits

    def _after_apply(self) -> None:
        """After an apply that left its transaction open, with none queued:
        commit now if something waits for it, else when the interval ends."""
        if self._applies or not self._uncommitted:
            return
        if self._commit_wanted or self._reads_waiting or self._stopping:
            self._start_apply([])
        elif self._commit_timer is None:
            delay = max(0.0, self._uncommitted_since + APPLY_COMMIT_INTERVAL_S - time.monotonic())
            self._commit_timer = asyncio.get_running_loop().call_later(delay, self._commit_due)

    async def _commit_applies(self) -> None:
        """Until every apply ran and is committed."""
        await self._wait_applies(0)
        self._commit_soon()
        await self._wait_applies(0)

    async def _apply(self, previous: asyncio.Task | None, committed: list[tuple[int, bytes]], nbytes: int) -> None:
        """Apply ``committed`` after the apply before it, answer the writes of
        our own slots as soon as their results are computed, and move the
        applied point once the apply's transaction is committed."""
        try:
            if previous is not None:
                await asyncio.wait({previous})
            await self._apply_committed(committed, nbytes)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self._stopping and isinstance(e, StorageError):
                # Stopping with storage failing: what is not committed is
                # applied again from the log at the next start.
                log(self.logger, logging.WARNING, "apply abandoned at stop", error=str(e))
                return
            log(self.logger, logging.CRITICAL, "apply failed", exc_info=True)
            # A broken invariant (or a failed fsync): crash the process rather
            # than serve wrongly.
            os._exit(70)
        finally:
            self._applies.remove(asyncio.current_task())
            self._apply_backlog_bytes -= nbytes
            # Proposals held for the backlog may go; compaction, and a
            # follower's held slots, are looked at in the turn.
            self._wake.set()
        self._after_apply()

    async def _apply_committed(self, committed: list[tuple[int, bytes]], nbytes: int) -> None:
        """Apply ``committed`` (``nbytes`` of slot values; empty: only commit)
        into the open apply transaction, and commit it when due
        (APPLY_COMMIT_INTERVAL_S)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        # After a failure the storage aborts the whole open transaction: each
        # attempt applies the uncommitted slots again from the committed point
        # (they are skipped while the transaction holds them).
        todo = self._uncommitted + committed
        recorded_before = {slot for slot, _ in self._uncommitted}  # their write sets went out
        value_bytes = self._uncommitted_bytes + nbytes
        commit = (
            not committed
            or APPLY_COMMIT_INTERVAL_S <= 0
            or self._commit_wanted
            or self._stopping
            or bool(self._reads_waiting)
            or value_bytes >= APPLY_UNCOMMITTED_BYTES_MAX
            or (bool(self._uncommitted) and now - self._uncommitted_since >= APPLY_COMMIT_INTERVAL_S)
        )
        new_applied = todo[-1][0] + 1 if todo else 0
        leading = self.replica.role is Role.LEADER and self.transport is not None
        write_sets = {} if leading or not committed else self._take_write_sets(committed[-1][0] + 1)
        mine = [(s, v) for s, v in committed if s in self._inflight]
        for slot, _ in mine:
            write_sets.pop(slot, None)  # our own writes need the batch's results
        storage = self.storage
        results: dict[int, list | None] = {}
        recorded: list = []  # the leader's (slot, digest before, digest after, rows)
        outcomes = {"installed": 0, "executed": 0}

        def apply(tables) -> int:
            results.clear()
            recorded.clear()
            outcomes.update(installed=0, executed=0)
            applied_below = storage.applying_below
            for slot, value in todo:
                if slot < applied_below:
                    continue  # already in the state machine (restart re-delivery, or uncommitted)
                if is_membership_value(value):
                    continue  # the consensus core's own value, not a ledger batch
                large = len(value) >= WRITE_SET_VALUE_BYTES_MIN
                if large and leading and slot not in recorded_before:
                    before = tables.digest
                    recorder = write_set.Recorder(tables)
                    result = results[slot] = self.apply_value(recorder, slot, value)
                    if result is not None:
                        recorded.append((slot, before, tables.digest, recorder))
                    continue
                ws = write_sets.get(slot)
                if ws is not None and ws.base_digest == tables.digest.to_bytes(32, "big"):
                    write_set.install(tables, write_set.decode(ws.rows))
                    if tables.digest.to_bytes(32, "big") != ws.digest:
                        raise write_set.WriteSetError(f"slot {slot}: the installed rows give another digest")
                    results[slot] = None  # a follower answers no writes
                    outcomes["installed"] += 1
                    continue
                results[slot] = self.apply_value(tables, slot, value)
                outcomes["executed"] += large
            # Answered now, before the transaction is committed: a chosen
            # slot's results follow from the chosen log alone, and an apply
            # redone after a failure or a crash computes the same.
            if mine:
                loop.call_soon_threadsafe(self._answer_writes, mine, dict(results))
            for i, (slot, before, after, recorder) in enumerate(recorded):
                recorded[i] = (slot, before, after, recorder.encode())
            return max(new_applied, applied_below)

        while True:
            try:
                await self._storage_step(None, apply, commit)
                break
            except write_set.WriteSetError as e:
                # Nothing uncommitted survived; run the batches instead.
                log(self.logger, logging.ERROR, "refused a leader's write set; running the batch",
                    error=str(e)[:300])
                m = self.metrics
                m.labels(m.write_sets, outcome="refused").inc()
                write_sets.clear()  # the step's other large slots count as executed
        m = self.metrics
        for outcome, count in outcomes.items():
            if count:
                m.labels(m.write_sets, outcome=outcome).inc(count)
        if recorded:
            self._send_write_sets(recorded)
        if commit:
            self._uncommitted = []
            self._uncommitted_bytes = 0
            self._commit_wanted = False
            if self._commit_timer is not None:
                self._commit_timer.cancel()
                self._commit_timer = None
            self.applied_below = max(self.applied_below, storage.applied_below)
            self._serve_waiting_reads()
            return
        if not self._uncommitted:
            self._uncommitted_since = now
        self._uncommitted = todo
        self._uncommitted_bytes = value_bytes

    def _hand_over_leadership(self) -> None:
        """A leader whose storage fails cannot order anything until it works
        again: ask the most caught-up healthy voter to campaign now, rather
        than leave the clients waiting for the followers' election timeout."""
        r = self.replica
        ls = r._leader  # read-only look at heartbeat acks and peers' chosen points
        if ls is None or r.membership_changing():
            return
        best: tuple[int, int] | None = None  # (chosen point, number)
        for number in r.membership.voters:
            if number == self.spec.number:
                continue
            if not _acks_recently(ls, number):
                continue
            candidate = (ls.peer_chosen.get(number, 0), number)
            if best is None or candidate > best:
                best = candidate
        if best is None:
            return
        try:
            r.transfer_leadership(best[1], at_once=True)
        except Refused:
            return
        # Nothing happened since the failed step's ready(), so this one holds
        # only the TimeoutNow (and reads refused by the transfer): no persist.
        ready = r.ready()
        assert ready.persist.empty and not ready.committed, "a hand-over produced a step to persist"
        self._send([m for m in ready.messages if sendable_before_persist(m)])
        self._refuse_reads(ready.reads_refused)
        # Writes in flight may still be chosen, by the next leader: their
        # callers retry there with the same ids instead of waiting for us.
        unknown = errors.OutcomeUnknown(
            "the leader's storage failed and it handed leadership over; the write may still land: "
            "retry with the same ids"
        )
        for inflight in self._inflight.values():
            for w in inflight.writes:
                if not w.future.done():
                    w.future.set_exception(unknown)
        self._inflight.clear()
        target = self.topology.by_number(best[1])
        log(self.logger, logging.WARNING, "storage failed on the leader; handing leadership over",
            target=target.id if target else best[1])

    def _send(self, messages: list[Message]) -> None:
        if self.transport is not None and messages:
            for m in messages:
                if type(m) is Heartbeat:
                    self._last_heartbeats[m.dst] = m
            self.transport.send(messages)

    async def _keep_followers(self) -> None:
        """While a long storage step runs (a large batch to apply), the turn
        that would send the next heartbeats waits for it; on a leader, resend
        the last ones every heartbeat period so the followers do not take a
        busy leader for a dead one. A resent heartbeat is a duplicate of one
        already sent (the network may duplicate any message): it renews the
        followers' election timers, never the leader's lease (its
        acknowledgements name the old round). Not once a step has run for
        KEEPALIVE_MAX_S: a leader stuck that long is treated as gone."""
        period = self.tick_s * self.config.heartbeat_ticks
        while True:
            await asyncio.sleep(period)
            started = self._step_started
            r = self.replica
            if started is None or r.role is not Role.LEADER or self.transport is None:
                continue
            if not period <= time.monotonic() - started <= KEEPALIVE_MAX_S:
                continue
            again = [m for m in self._last_heartbeats.values() if m.ballot == r.ballot]
            if again:
                self.transport.send(again)

    @property
    def _stopped_reason(self) -> str:
        return "; ".join(self._storage_failures.values())

    async def _storage_step(self, persist: Persist | None, apply=None, commit: bool = True) -> None:
        """One ``persist`` (``apply`` None) or one ``apply``, retried with
        backoff while storage is unavailable (full disk, I/O error): the step
        did not happen, so nothing that waits for it may go out, and the
        replica stops accepting until it works."""
        storage = self.storage
        kind = "persist" if apply is None else "apply"

        def step() -> float:
            t0 = time.perf_counter()
            if apply is None:
                storage.persist(persist)
            else:
                storage.apply(apply, commit=commit)
            return time.perf_counter() - t0

        loop = asyncio.get_running_loop()
        backoff = STORAGE_RETRY_MIN_S
        # A persist on a replica that is not leading runs on the loop thread:
        # nothing there needs the loop during its fsync (messages arriving
        # meanwhile are read right after), and the hand-off to a thread and
        # back costs two thread wake-ups, 0.1-0.5 ms each here, on every
        # write's path. Measured with one client: p50 3.85 -> 3.43 ms; 64
        # clients and batches unchanged. Applies run in their own thread:
        # they can be long, and run while the turns go on.
        in_thread = STORAGE_IN_THREAD and (apply is not None or self.replica.role is Role.LEADER)
        executor = self._storage_thread if apply is None else self._apply_thread
        while True:
            try:
                if in_thread:
                    if apply is None:
                        self._step_started = time.monotonic()
                    try:
                        elapsed = await loop.run_in_executor(executor, step)
                    finally:
                        if apply is None:
                            self._step_started = None
                else:
                    elapsed = step()
                break
            except StorageSyncFailed:
                # The process stops (exit 70: what reached the disk is unknown,
                # only a restart from it is safe); ask a follower to take over
                # first, so the clients need not wait for an election timeout.
                self._hand_over(kind)
                await asyncio.sleep(SYNC_FAILED_HANDOVER_S)
                raise
            except StorageUnavailable as e:
                if self._stopping and apply is not None:
                    raise  # the log holds what is not committed
                if kind not in self._storage_failures:
                    log(self.logger, logging.ERROR, f"storage {kind} failed; stopped accepting", error=str(e))
                    if not self._storage_failures:
                        self.on_serving_changed(False)
                    self._hand_over(kind)
                self._storage_failures[kind] = f"storage unavailable ({e.cause})"
                self._fail_queue(errors.ReplicaStopped(self._stopped_reason))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, STORAGE_RETRY_MAX_S)
        if self._storage_failures.pop(kind, None) is not None:
            log(self.logger, logging.INFO, f"storage {kind} works again")
            if not self._storage_failures:
                log(self.logger, logging.INFO, "storage works again; accepting requests")
                self.on_serving_changed(True)
        self.metrics.labels(self.metrics.fsync_latency).observe(elapsed)

    def _hand_over(self, kind: str) -> None:
        """Hand leadership over now (from a turn's persist) or at the start of
        the next turn (from an apply, which runs between turns)."""
        if kind == "persist":
            self._hand_over_leadership()
        else:
            self._handover_wanted = True
            self._wake.set()

    def _answer_writes(self, committed, results: dict) -> None:
        """Give each write of our own chosen slots in ``committed`` its result:
        ``results`` is slot -> the batch's results, as the apply computed them."""
        now = time.monotonic()
        for slot, value in committed:
            inflight = self._inflight.pop(slot, None)
            if inflight is None:
                continue
            if inflight.value != value:
                # Another leader filled our slot: the writes did not happen here.
                err = errors.OutcomeUnknown(
                    "leadership changed before the write was chosen; retry with the same ids"
                )
                for w in inflight.writes:
                    if not w.future.done():
                        w.future.set_exception(err)
                continue
            slot_results = results.get(slot)
            for i, w in enumerate(inflight.writes):
                if not w.future.done():
                    w.future.set_result(slot_results[i] if slot_results is not None else None)
            self.metrics.labels(self.metrics.commit_latency).observe(now - inflight.proposed_at)

    def _answer(self, ready) -> None:
        """Register and refuse the reads of ``ready``; the writes it commits
        are answered by their apply (``_apply``)."""
        for rr in ready.reads:
            self._reads_waiting.append((rr.index, rr.token))
        self._refuse_reads(ready.reads_refused)
        self._serve_waiting_reads()
        if self._reads_waiting:
            self._commit_soon()

    def _serve_waiting_reads(self) -> None:
        if not self._reads_waiting:
            return
        still = []
        for index, token in self._reads_waiting:
            if index <= self.applied_below:
                future = self._reads.get(token)
                if future is not None and not future.done():
                    future.set_result(None)
            else:
                still.append((index, token))
        self._reads_waiting = still

    def _refuse_reads(self, refused) -> None:
        for rf in refused:
            future = self._reads.get(rf.token)
            if future is not None and not future.done():
                future.set_exception(self.not_leader(f"serve linearizable reads ({rf.reason.name.lower()})"))

    def _observe(self) -> None:
        r = self.replica
        m = self.metrics
        m.set_role(r.role.value)
        m.labels(m.ballot_round).set(r.ballot.round)
        m.labels(m.chosen_index).set(r.chosen_below)
        m.labels(m.applied_index).set(self.applied_below)
        m.labels(m.queue_requests).set(len(self._queue))
        if r.leader_id != self._last_leader:
            m.labels(m.leader_changes).inc()
            leader = self.topology.by_number(r.leader_id)
            log(self.logger, logging.INFO, "leader changed",
                leader=leader.id if leader else None, role=r.role.value)
            self._last_leader = r.leader_id
        if r.role is not Role.LEADER and self._queue:
            self._fail_queue(self.not_leader("order writes"))

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        r = self.replica
        leader = self.leader_spec
        return {
            "id": self.spec.id,
            "address": self.spec.address,
            "city": self.spec.city,
            "data_center": self.spec.data_center,
            "role": r.role.value,
            "ballot": str(r.ballot),
            "chosen_index": r.chosen_below,
            "applied_index": self.applied_below,
            "state_digest": digest_mod.to_hex(self.storage.state_digest()),
            "leader_id": leader.id if leader else "",
            "pid": os.getpid(),
            "reachable": True,
        }


# ---------------------------------------------------------------- process


class ReplicaProcess:
    """One replica: storage, driver, peer transport, gRPC server, metrics."""

    def __init__(
        self, topology: topo.Topology, replica_id: str, seed: int | None = None, cert_dir: Path | None = None
    ) -> None:
        self.topology = topology
        self.cert_dir = cert_dir
        self.spec = topology.replica(replica_id)
        self.metrics = ReplicaMetrics(topology.cluster_id, self.spec.id)
        self.driver: Driver | None = None
        self.logger = setup_logging(
            self.spec.id, lambda: str(self.driver.replica.ballot) if self.driver else "-"
        )
        self.seed = seed
        self.server: grpc.aio.Server | None = None
        self.storage: ReplicaStorage | None = None

    async def start(self) -> None:
        from ledger import api  # the handlers; imported here to keep the wiring in one place
        from ledger.server_sm import has_pending_expiries, make_applier

        spec = self.spec
        # Credentials first: a replica that may not run (plaintext on a network,
        # a wrong certificate) stops before it opens storage or a port.
        security = server_auth.for_replica(self.topology, spec, self.cert_dir)
        if security.warning:
            log(self.logger, logging.WARNING, security.warning)
        self.storage = ReplicaStorage(spec.data_dir, cluster_id=self.topology.cluster_id, replica_id=spec.number)
        self.driver = Driver(
            self.topology, spec, self.storage, make_applier(), self.metrics, self.logger, self.seed
        )
        self.driver.has_pending_expiries = has_pending_expiries
        peers = {r.number: (r.id, r.peer_address, r.address) for r in self.topology.replicas if r.number != spec.number}
        transport = PeerTransport(
            self.topology.cluster_id, spec.number, peers, self.driver.deliver, self.metrics, self.logger,
            tls=security.credentials,
        )
        self.driver.transport = transport
        transport.snapshot_provider = self.driver.serve_snapshot
        transport.on_unknown_sender = lambda sender: self.driver.refresh_topology({sender})
        try:
            await transport.listen(spec.peer_address)
        except OSError as e:
            raise OSError(
                f"cannot listen on {spec.peer_address} (peer_address; {e.strerror or e}): stop what holds it "
                f"(`ss -ltnp | grep {spec.peer_port}`) or change replica {spec.id}'s peer_address in "
                f"{self.topology.path}"
            ) from None

        server = grpc.aio.server(
            # Authentication and authorization of every call (ledger.server_auth).
            interceptors=[server_auth.Authorizer(security, self.metrics)],
            # Beyond this many RPCs in progress gRPC itself answers RESOURCE_EXHAUSTED.
            maximum_concurrent_rpcs=RPCS_IN_PROGRESS_MAX,
            options=[
                ("grpc.max_send_message_length", SERVER_MESSAGE_BYTES_MAX),
                ("grpc.max_receive_message_length", SERVER_RECEIVE_BYTES_MAX),
                ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION_MAX),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        api.add_services(server, self.driver, tls=security.credentials)
        from ledger.api_proto import pb_grpc

        pb_grpc.add_PeerServicer_to_server(PeerServicer(transport), server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        try:
            if security.tls:
                port = server.add_secure_port(spec.address, security.credentials.server_credentials())
            else:
                port = server.add_insecure_port(spec.address)
        except RuntimeError:
            port = 0
        if port == 0:
            await transport.stop()
            raise OSError(
                f"cannot listen on {spec.address}: the address is in use or not local; stop what holds it "
                f"(`ss -ltnp | grep {spec.port}`) or change replica {spec.id}'s address in {self.topology.path}"
            )
        self.server = server
        await server.start()
        self.metrics.serve(spec.metrics_port, host=spec.host)
        transport.start()
        self.driver.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

        def serving_changed(serving: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            asyncio.get_running_loop().create_task(self._set_health(status))

        self.driver.on_serving_changed = serving_changed
        log(self.logger, logging.INFO, "replica started", address=spec.address, peer_address=spec.peer_address,
            metrics_port=spec.metrics_port, data_dir=str(spec.data_dir), pid=os.getpid(),
            applied_index=self.driver.applied_below)

    async def _set_health(self, status) -> None:
        for name in ("",) + SERVICE_NAMES:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self) -> None:
        if self.server is not None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.stop(grace=0.5)
        if self.driver is not None:
            if self.driver.transport is not None:
                await self.driver.transport.stop()
            await self.driver.stop()
        if self.storage is not None:
            self.storage.close()
        self.metrics.stop_serving()
        log(self.logger, logging.INFO, "replica stopped")


async def _serve(
    topology: topo.Topology, replica_id: str, seed: int | None, cert_dir: Path | None = None
) -> None:
    proc = ReplicaProcess(topology, replica_id, seed, cert_dir)
    await proc.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.server", description="Run one replica of a ledger cluster."
    )
    parser.add_argument("--topology", required=True, help="topology TOML file (or a shipped name: one-city, ...)")
    parser.add_argument("--id", required=True, help="this replica's id in the topology, e.g. r2")
    parser.add_argument("--data", help="data directory (default: the topology's data_dir for this replica)")
    parser.add_argument("--seed", type=int, help="seed of the consensus random source (default: random)")
    parser.add_argument("--cert-dir", help="certificates (default: the topology's [tls] cert_dir)")
    parser.add_argument(
        "--join", action="store_true",
        help="join a running cluster as a learner (as if the topology said join = true for this replica); "
        "then add it with `ledgerctl members add <id>`",
    )
    args = parser.parse_args(argv)
    try:
        topology = topo.load(args.topology)
        spec = topology.replica(args.id)
    except topo.TopologyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.data:
        topology = _with_replica_data_dir(topology, spec.id, Path(args.data))
    if args.join:
        topology = _as_joining(topology, spec.id)
    cert_dir = Path(args.cert_dir) if args.cert_dir else None
    try:
        if os.environ.get("LEDGER_PROFILE"):  # development aid: cProfile the whole process
            import cProfile

            cProfile.runctx(
                "asyncio.run(_serve(topology, args.id, args.seed, cert_dir))", globals(), locals(),
                os.environ["LEDGER_PROFILE"],
            )
        else:
            asyncio.run(_serve(topology, args.id, args.seed, cert_dir))
    except server_auth.SecurityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 5
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    return 0


def _with_replica_data_dir(topology: topo.Topology, replica_id: str, path: Path) -> topo.Topology:
    replicas = tuple(replace(r, data_dir=path) if r.id == replica_id else r for r in topology.replicas)
    return replace(topology, replicas=replicas)


def _as_joining(topology: topo.Topology, replica_id: str) -> topo.Topology:
    replicas = tuple(replace(r, join=True) if r.id == replica_id else r for r in topology.replicas)
    return replace(topology, replicas=replicas)


if __name__ == "__main__":
    sys.exit(main())
