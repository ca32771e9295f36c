"""Durable storage for one replica: acceptor state, log and state tables in LMDB.

Two LMDB environments per replica directory, each with its own writer, so
that accepting the next slots never waits for applying the chosen ones::

    storage.persist(ready.persist)      # promise + accepts + chosen point,
                                        # in <dir>/acceptor, one fsync
    network.send(ready.messages)        # only after it returned
    storage.apply(apply, commit=...)    # applied rows + digest, in <dir>;
                                        # may run while the next persist does,
                                        # and leave its transaction open for
                                        # the next apply (one commit for many)

Layout (named databases; keys are raw bytes, integers big-endian)::

    <dir>/acceptor (the acceptor environment)
      replica.meta      b"format_version", b"cluster_id", b"replica_id",
                        b"chosen_below", b"log_start" -> 8 B int (cluster_id:
                        UTF-8), b"memberships" -> msgpack membership history
                        as of log_start
      replica.acceptor  b"promised" -> msgpack [round, replica_id]
      replica.log       slot (8 B) -> msgpack [ballot round, ballot replica, value]
    <dir> (the state environment)
      replica.meta      b"format_version", b"cluster_id", b"replica_id",
                        b"applied_below" -> 8 B int, b"digest" -> 32 B state
                        digest, b"snapshot_index", b"snapshot_memberships":
                        the last installed snapshot (see install_snapshot)
      sm.<table>        one per name in ``ledger.tables.TABLES``: the state
                        machine's rows, exactly as ``MemoryTables`` holds them

Both environments are opened with sync on, metasync off, and never with
``writemap`` (a full disk would then SIGBUS the process). Without it, LMDB
writes new pages with ``pwrite`` and only then the meta page, so a failed
commit (full disk, I/O error) leaves the last committed state intact and
readable, and a later commit works once space returns.

Durability: every commit fdatasyncs its data pages before it writes its
meta page (LMDB's MDB_NOMETASYNC keeps atomicity and order: a meta page
never reaches the disk ahead of the pages it points to). A persist that
must be durable (a promise or accepts, whose replies are sent once it
returns) then also syncs the meta page (``env.sync``). A persist that only
moves the chosen point does not, nor does an apply: their meta page rides
on the environment's next commit. A power loss may then undo the last
apply, and only as a whole: ``applied_below``, the rows and the digest go
back together to an earlier committed state. The accepted entries of those
slots are still in the log: an apply only ever follows the persist of the
entries it applies, entries are synced, and the log is compacted only below
a synced applied point. The chosen point is relearned from peers (and is at
least the applied point), so the restarted replica applies the same slots
again, deterministically, to the same rows. Clients are answered only for
chosen slots, i.e. slots a majority holds durably, so no answer depends on
an unsynced apply. A process crash loses nothing (the page cache survives
it).

Errors (the server maps them to gRPC codes; nothing here knows gRPC)::

    StorageError                 base class
    +-- StorageUnavailable       the disk is full, an I/O error, or the map is
    |                            full: the step did NOT happen (nothing changed
    |                            on disk or in memory); retry it later.
    |                            ``.cause`` is the LMDB/OS exception.
    +-- WrongDataDir             the directory belongs to another cluster or
    |                            replica (refused at open)
    +-- DataDirInUse             another process holds this directory
    +-- IncompatibleFormat       written by another storage format version
    +-- StorageCorrupt           a full scan disagrees with the stored digest

An exception raised by the ``apply`` callback aborts the step and propagates
unchanged. Broken preconditions (a promise going down) are bugs: assertions.

Keys of the state tables must be 1..511 bytes (LMDB's key limit); ``put``
raises ``ValueError`` otherwise (``MemoryTables`` takes any key: the state
machine's keys are fixed-size ids and never meet the limit).
``get``/``delete``/``range`` accept any key or bound.

Threads: one ``persist`` and one ``apply`` at a time, which may overlap;
``compact_log`` as a persist (it writes the acceptor environment and only
syncs the state one); ``install_snapshot`` while neither runs. ``reader``,
``load`` and ``verify_digest`` may run on any thread meanwhile, each in its own
snapshot. Keep readers short: an open read transaction pins old pages.
Accepted entries below ``log_start`` are stored but not loaded (their slots
are in a snapshot); the next ``compact_log`` drops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable, Iterator

import lmdb
import msgpack

from consensus.ballot import ZERO_BALLOT, Ballot
from consensus.ready import DurableState, Persist
from ledger import digest as _digest
from ledger.tables import TABLES

FORMAT_VERSION = 4  # 2: the digest leaves out ledger.digest.PROJECTION_TABLES; 3: account chains;
# 4: the acceptor state in its own environment
DEFAULT_MAP_SIZE_BYTES = 32 << 30  # address space only: the file grows as used
KEY_BYTES_MAX = 511  # LMDB's compiled-in key limit
_UNHASHED = _digest.PROJECTION_TABLES
_TABLE_DB_PREFIX = b"sm."
_META_DB = b"replica.meta"
_ACCEPTOR_DB = b"replica.acceptor"
_LOG_DB = b"replica.log"
_MAX_DBS = 3 + len(TABLES) + 4  # headroom for later formats
_LOCK_FILE = "replica.lock"

_K_FORMAT = b"format_version"
_K_CLUSTER = b"cluster_id"
_K_REPLICA = b"replica_id"
_K_CHOSEN = b"chosen_below"
_K_APPLIED = b"applied_below"
_K_LOG_START = b"log_start"
_K_DIGEST = b"digest"
_K_PROMISED = b"promised"
_K_MEMBERSHIPS = b"memberships"  # msgpack membership history as of log_start
_K_SNAPSHOT_INDEX = b"snapshot_index"  # state: the last installed snapshot's index
_K_SNAPSHOT_MEMBERSHIPS = b"snapshot_memberships"  # state: its membership history
ACCEPTOR_DIR = "acceptor"  # the acceptor environment's subdirectory
INCOMING_SNAPSHOT_FILE = "snapshot.incoming"  # a snapshot being received (spool)
SNAPSHOT_CHUNK_BYTES = 1 << 20  # rows per streamed snapshot chunk: about this many bytes


class StorageError(Exception):
    """Base class of this module's errors (hierarchy in the module docstring)."""


class StorageUnavailable(StorageError):
    """The disk refused a write (full, I/O error, map full); nothing changed."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: storage unavailable: {type(cause).__name__}: {cause}")
        self.cause = cause


class WrongDataDir(StorageError):
    """The data directory belongs to another cluster or replica."""


class DataDirInUse(StorageError):
    """Another process (or another ReplicaStorage) has this directory open."""


class IncompatibleFormat(StorageError):
    """The directory was written by another storage format version."""


class StorageSyncFailed(StorageError):
    """An fsync failed after a commit: whether the step is durable is unknown,
    and so is the page cache's state (as PostgreSQL concludes, the only safe
    course is to restart from what the disk holds). Never retried."""


class StorageCorrupt(StorageError):
    """The stored rows do not hash to the stored digest."""


class SnapshotMismatch(StorageError):
    """A received snapshot's rows do not hash to the digest its sender stated.

    Nothing was installed; fetch the snapshot again."""


def _int8(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _from_int8(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _is_unavailable(exc: BaseException) -> bool:
    """Operating errors of the disk, as opposed to bugs or corruption.

    ``DiskError`` is ENOSPC; a plain ``lmdb.Error`` carries an errno such as
    EIO (a short write on a full disk) or EDQUOT; ``MapFullError`` means the
    configured map size is used up; ``PanicError`` follows a failed meta write.
    """
    if isinstance(exc, (lmdb.DiskError, lmdb.MapFullError, lmdb.PanicError)):
        return True
    if type(exc) is lmdb.Error:
        return True
    return isinstance(exc, OSError)


class LmdbTableReader:
    """Read side of ``Tables`` over one LMDB transaction (see ``ledger.tables``).

    ``digest`` is the digest of the rows this transaction sees.
    """

    __slots__ = ("_txn", "_dbs", "_cursors", "_digest")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, object], digest: int) -> None:
        self._txn = txn
        self._dbs = dbs
        # One cursor per table for point operations, made on first use.
        self._cursors: dict[bytes, lmdb.Cursor] = {}
        self._digest = digest

    @property
    def digest(self) -> int:
        return self._digest

    def _cursor(self, table: bytes) -> lmdb.Cursor:
        cursor = self._cursors.get(table)
        if cursor is None:
            cursor = self._cursors[table] = self._txn.cursor(db=self._dbs[table])
        return cursor

    def get(self, table: bytes, key: bytes) -> bytes | None:
        cursor = self._cursors.get(table) or self._cursor(table)
        try:
            return cursor.get(key)
        except lmdb.BadValsizeError:
            return None  # an empty or over-long key is never stored

    def range(
        self,
        table: bytes,
        start: bytes,
        end: bytes | None,
        limit: int,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows with start <= key < end (end None: no upper bound), at most limit.

        The rows are read when called, so the caller may write to the table
        while it walks the result.
        """
        rows: list[tuple[bytes, bytes]] = []
        if limit <= 0 or (end is not None and end <= start):
            return iter(rows)
        cursor = self._txn.cursor(db=self._dbs[table])
        if not reverse:
            if start:
                found = cursor.set_range(start[:KEY_BYTES_MAX])
                # A start longer than any stored key may sit one row ahead.
                while found and cursor.key() < start:
                    found = cursor.next()
            else:
                found = cursor.first()
            if not found:
                return iter(rows)
            append = rows.append
            if end is None:
                for row in cursor.iternext():
                    append(row)
                    if len(rows) >= limit:
                        break
            else:
                for row in cursor.iternext():
                    if row[0] >= end:
                        break
                    append(row)
                    if len(rows) >= limit:
                        break
        else:
            if end is None:
                found = cursor.last()
            else:
                found = cursor.set_range(end[:KEY_BYTES_MAX]) or cursor.last()
                while found and cursor.key() >= end:
                    found = cursor.prev()
            if not found:
                return iter(rows)
            append = rows.append
            for row in cursor.iterprev():
                if row[0] < start:
                    break
                append(row)
                if len(rows) >= limit:
                    break
        cursor.close()
        return iter(rows)


class LmdbTables(LmdbTableReader):
    """``Tables`` inside the write transaction of one ``write_step``.

    Keeps the digest incrementally exactly as ``MemoryTables`` does: each put
    or delete reads the old row (in the same LMDB call) and combines.
    """

    __slots__ = ()

    def put(self, table: bytes, key: bytes, value: bytes) -> None:
        cursor = self._cursors.get(table) or self._cursor(table)
        try:
            if table in _UNHASHED:  # no old value needed for the digest
                cursor.put(key, value)
                return
            old = cursor.replace(key, value)
        except lmdb.BadValsizeError as e:
            raise ValueError(
                f"table {table!r}: key of {len(key)} bytes; keys are 1..{KEY_BYTES_MAX} bytes"
            ) from e
        self._digest = _digest.combine(self._digest, table, key, old, value)

    def insert_rows(self, table: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        if not rows:
            return
        cursor = self._cursors.get(table) or self._cursor(table)
        _, added = cursor.putmulti(rows, overwrite=False)
        # The transaction is aborted by whoever catches this (write_step).
        assert added == len(rows), f"insert_rows: {table!r} already held {len(rows) - added} of the keys"
        self._digest = _digest.inserted(self._digest, table, rows)

    def replace_rows(self, table: bytes, rows: list[tuple[bytes, bytes | None, bytes]]) -> None:
        if not rows:
            return
        cursor = self._cursors.get(table) or self._cursor(table)
        cursor.putmulti([(key, new) for key, _, new in rows])
        self._digest = _digest.replaced(self._digest, table, rows)

    def write_rows(self, table: bytes, rows: list[tuple[bytes, bytes]], new_only: bool) -> None:
        if not rows:
            return
        cursor = self._cursors.get(table) or self._cursor(table)
        try:
            if new_only:
                _, added = cursor.putmulti(rows, overwrite=False)
                if added != len(rows):
                    raise ValueError(f"write_rows: {table!r} already held {len(rows) - added} of the new keys")
                self._digest = _digest.inserted(self._digest, table, rows)
                return
            replace = cursor.replace
            changed = [(key, replace(key, value), value) for key, value in rows]
        except lmdb.BadValsizeError as e:
            raise ValueError(f"write_rows: {table!r}: a key is not 1..{KEY_BYTES_MAX} bytes") from e
        self._digest = _digest.replaced(self._digest, table, changed)

    def delete(self, table: bytes, key: bytes) -> bool:
        cursor = self._cursors.get(table) or self._cursor(table)
        try:
            old = cursor.pop(key)
        except lmdb.BadValsizeError:
            return False
        if old is None:
            return False
        self._digest = _digest.combine(self._digest, table, key, old, None)
        return True


class _Env:
    """One LMDB environment of a replica directory: its handle and named
    databases, reopened on the next write after a panic or a failed sync."""

    def __init__(self, path: str, map_size_bytes: int, names: tuple[bytes, ...]) -> None:
        self.path = path
        self.map_size_bytes = map_size_bytes
        self.names = names
        self.handle: lmdb.Environment | None = None
        self.dbs: dict[bytes, object] = {}
        self.needs_reopen = False

    def open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        env = self.handle = lmdb.open(
            self.path,
            map_size=self.map_size_bytes,
            subdir=True,
            max_dbs=_MAX_DBS,
            sync=True,
            metasync=False,  # durable steps sync the meta page themselves
            writemap=False,  # never: a full disk would SIGBUS the process
            map_async=False,
            lock=True,
        )
        # Free reader slots of processes that died holding a read transaction:
        # a stale slot would pin old pages and make the file grow.
        env.reader_check()
        with env.begin(write=True) as txn:
            self.dbs = {name: env.open_db(name, txn=txn) for name in self.names}

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def begin_write(self) -> tuple[lmdb.Transaction, bool]:
        """A write transaction, and whether the environment was reopened first
        (after a failed write left it unusable); StorageUnavailable if that fails."""
        reopened = False
        if self.needs_reopen:
            try:
                self.close()
                self.open()
            except lmdb.Error as e:
                raise StorageUnavailable("reopen", e) from e
            self.needs_reopen = False
            reopened = True
        assert self.handle is not None
        try:
            return self.handle.begin(write=True), reopened
        except lmdb.Error as e:
            self.note_failure(e)
            raise StorageUnavailable("begin", e) from e

    def begin(self) -> lmdb.Transaction:
        assert self.handle is not None
        return self.handle.begin()

    def sync(self, what: str) -> None:
        """Make the last commit durable (its data pages already are)."""
        assert self.handle is not None
        try:
            self.handle.sync(True)
        except lmdb.Error as e:
            self.needs_reopen = True
            raise StorageSyncFailed(f"{self.path}: {what}: fsync after commit failed: {e}") from e

    def fail_write(self, op: str, txn: lmdb.Transaction, e: BaseException) -> None:
        """Abort a failed write; a full disk or I/O error becomes StorageUnavailable."""
        _abort_quietly(txn)
        if isinstance(e, lmdb.Error | OSError) and _is_unavailable(e):
            self.note_failure(e)
            raise StorageUnavailable(op, e) from e

    def note_failure(self, exc: BaseException) -> None:
        if isinstance(exc, lmdb.PanicError):
            self.needs_reopen = True


class ReplicaStorage:
    """The durable state of one replica: its acceptor environment and its
    state environment (module docstring).

    One writer per environment: ``persist`` (and ``compact_log``) from one
    thread at a time, ``apply`` from one thread at a time, and the two may
    run at once. ``install_snapshot`` writes both: call it while neither runs. ``reader`` and ``load`` may run from any thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        cluster_id: str,
        replica_id: int,
    ) -> None:
        assert cluster_id, "cluster_id must not be empty"
        assert replica_id >= 0
        self.path = os.fspath(path)
        self.cluster_id = cluster_id
        self.replica_id = replica_id
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DataDirInUse(f"{self.path}: data directory is in use by another process") from None
        self._state = _Env(self.path, map_size_bytes, (_META_DB,) + tuple(_TABLE_DB_PREFIX + t for t in TABLES))
        self._acc = _Env(
            os.path.join(self.path, ACCEPTOR_DIR), map_size_bytes, (_META_DB, _ACCEPTOR_DB, _LOG_DB)
        )
        self._packer = msgpack.Packer()
        self._state_txn: lmdb.Transaction | None = None  # an apply transaction left open
        try:
            self._state.open()
            self._check_state_format()  # before creating anything beside a directory of another format
            self._acc.open()
            self._init_or_check()
        except BaseException as e:
            self.close()
            if isinstance(e, lmdb.Error | OSError) and _is_unavailable(e):
                raise StorageUnavailable(f"open {self.path}", e) from e
            raise

    # --- opening -------------------------------------------------------

    @property
    def _tables(self) -> dict[bytes, object]:
        dbs = self._state.dbs
        return {t: dbs[_TABLE_DB_PREFIX + t] for t in TABLES}

    def _check_identity(self, txn: lmdb.Transaction, meta_db: object, what: str) -> bool:
        """Check one environment's format and owner; False if it has none yet."""
        meta = txn.cursor(db=meta_db)
        fmt = meta.get(_K_FORMAT)
        if fmt is None:
            return False
        if _from_int8(fmt) != FORMAT_VERSION:
            raise IncompatibleFormat(
                f"{self.path}: storage format {_from_int8(fmt)}, this build reads {FORMAT_VERSION}"
            )
        cluster = meta.get(_K_CLUSTER).decode()
        replica = _from_int8(meta.get(_K_REPLICA))
        if (cluster, replica) != (self.cluster_id, self.replica_id):
            raise WrongDataDir(
                f"{self.path}: {what} holds replica {replica} of cluster {cluster!r}, "
                f"not replica {self.replica_id} of cluster {self.cluster_id!r}"
            )
        return True

    def _put_identity(self, txn: lmdb.Transaction, meta_db: object, zeros: tuple[bytes, ...]) -> None:
        meta = txn.cursor(db=meta_db)
        meta.put(_K_FORMAT, _int8(FORMAT_VERSION))
        meta.put(_K_CLUSTER, self.cluster_id.encode())
        meta.put(_K_REPLICA, _int8(self.replica_id))
        for k in zeros:
            meta.put(k, _int8(0))

    def _check_state_format(self) -> None:
        with self._state.begin() as txn:
            self._check_identity(txn, self._state.dbs[_META_DB], "its state")

    def _init_or_check(self) -> None:
        acc, state = self._acc, self._state
        assert acc.handle is not None and state.handle is not None
        # The acceptor environment first: a crash between the two leaves an
        # acceptor with an empty log and no state, which starts afresh.
        with acc.handle.begin(write=True) as txn:
            acc_known = self._check_identity(txn, acc.dbs[_META_DB], "its acceptor log")
            if not acc_known:
                if txn.stat(acc.dbs[_LOG_DB])["entries"]:
                    raise WrongDataDir(f"{self.path}: its acceptor log has entries but no replica identity")
                self._put_identity(txn, acc.dbs[_META_DB], (_K_CHOSEN, _K_LOG_START))
            log_start = _from_int8(txn.get(_K_LOG_START, db=acc.dbs[_META_DB]))
        with state.handle.begin(write=True) as txn:
            state_known = self._check_identity(txn, state.dbs[_META_DB], "its state")
            if not state_known:
                if any(txn.stat(db)["entries"] for db in self._tables.values()):
                    raise WrongDataDir(f"{self.path}: has data but no replica identity")
                if log_start:
                    # The slots below log_start exist only in a state that is gone.
                    raise WrongDataDir(f"{self.path}: its state is missing (the log starts at {log_start})")
                self._put_identity(txn, state.dbs[_META_DB], (_K_APPLIED,))
                txn.put(_K_DIGEST, bytes(32), db=state.dbs[_META_DB])
            elif not acc_known:
                raise WrongDataDir(f"{self.path}: has a state but its acceptor log is missing")
        with acc.begin() as txn:
            self._read_acceptor(txn)
        with state.begin() as txn:
            self._read_state(txn)
            meta = state.dbs[_META_DB]
            raw_index = txn.get(_K_SNAPSHOT_INDEX, db=meta)
            raw_members = txn.get(_K_SNAPSHOT_MEMBERSHIPS, db=meta)
        if raw_index is not None and _from_int8(raw_index) > self._log_start:
            # A crash came between a snapshot's two commits: finish it.
            self._finish_install(_from_int8(raw_index), _decode_memberships(raw_members))

    def _read_acceptor(self, txn: lmdb.Transaction) -> None:
        meta = txn.cursor(db=self._acc.dbs[_META_DB])
        self._chosen_below = _from_int8(meta.get(_K_CHOSEN))
        self._log_start = _from_int8(meta.get(_K_LOG_START))
        raw = txn.get(_K_PROMISED, db=self._acc.dbs[_ACCEPTOR_DB])
        self._promised = ZERO_BALLOT if raw is None else Ballot(*msgpack.unpackb(raw))

    def _read_state(self, txn: lmdb.Transaction) -> None:
        meta = txn.cursor(db=self._state.dbs[_META_DB])
        self._applied_below = _from_int8(meta.get(_K_APPLIED))
        self._digest = _from_int8(meta.get(_K_DIGEST))
        self._applying_below, self._applying_digest = self._applied_below, self._digest

    def _begin_acceptor_write(self) -> lmdb.Transaction:
        txn, reopened = self._acc.begin_write()
        if reopened:
            self._read_acceptor(txn)
        return txn

    def _begin_state_write(self) -> lmdb.Transaction:
        txn, reopened = self._state.begin_write()
        if reopened:
            self._read_state(txn)
        return txn

    def close(self) -> None:
        self.abort_apply()  # as a crash would: the log still holds those slots
        self._acc.close()
        self._state.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> "ReplicaStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------

    @property
    def promised(self) -> Ballot:
        return self._promised

    @property
    def chosen_below(self) -> int:
        return self._chosen_below

    @property
    def applied_below(self) -> int:
        return self._applied_below

    @property
    def log_start(self) -> int:
        return self._log_start

    def state_digest(self) -> int:
        """The committed state digest (``ledger.digest``)."""
        return self._digest

    def load(self) -> DurableState:
        """Everything the replica restarts from, as last committed."""
        with self._state.begin() as txn:
            applied_below = _from_int8(txn.get(_K_APPLIED, db=self._state.dbs[_META_DB]))
        acc = self._acc
        with acc.begin() as txn:
            meta = txn.cursor(db=acc.dbs[_META_DB])
            log_start = _from_int8(meta.get(_K_LOG_START))
            raw = txn.get(_K_PROMISED, db=acc.dbs[_ACCEPTOR_DB])
            promised = ZERO_BALLOT if raw is None else Ballot(*msgpack.unpackb(raw))
            accepted: dict[int, tuple[Ballot, bytes]] = {}
            cursor = txn.cursor(db=acc.dbs[_LOG_DB])
            if cursor.set_range(_int8(log_start)):
                unpackb = msgpack.unpackb
                for key, raw_entry in cursor.iternext():
                    rnd, rid, value = unpackb(raw_entry)
                    accepted[_from_int8(key)] = (Ballot(rnd, rid), value)
            raw_members = meta.get(_K_MEMBERSHIPS)
            memberships = _decode_memberships(raw_members) if raw_members else ()
            return DurableState(
                promised=promised,
                accepted=accepted,
                # An applied slot is chosen, whether or not the (unsynced)
                # step that moved the chosen point past it survived.
                chosen_below=max(_from_int8(meta.get(_K_CHOSEN)), applied_below),
                applied_below=applied_below,
                log_start=log_start,
                memberships=memberships,
            )

    @contextlib.contextmanager
    def reader(self) -> Iterator[LmdbTableReader]:
        """A consistent read-only view of the committed state tables.

        Its ``digest`` is the committed digest of exactly the rows it sees.
        """
        txn = self._state.begin()
        try:
            raw = txn.get(_K_DIGEST, db=self._state.dbs[_META_DB])
            yield LmdbTableReader(txn, self._tables, _from_int8(raw))
        finally:
            txn.abort()

    def recompute_digest(self) -> int:
        """The digest of all committed rows, from a full scan."""
        with self._state.begin() as txn:
            return self._scan_digest(txn)

    def verify_digest(self) -> int:
        """Recompute the digest from a full scan; raise ``StorageCorrupt`` if it
        differs from the stored one. Returns the recomputed digest."""
        with self._state.begin() as txn:  # one snapshot for both, whatever writes meanwhile
            stored = _from_int8(txn.get(_K_DIGEST, db=self._state.dbs[_META_DB]))
            scanned = self._scan_digest(txn)
        if scanned != stored:
            raise StorageCorrupt(
                f"{self.path}: stored digest {_digest.to_hex(stored)} "
                f"but rows hash to {_digest.to_hex(scanned)}"
            )
        return scanned

    def _scan_digest(self, txn: lmdb.Transaction) -> int:
        total = 0
        row_hash = _digest.row_hash
        tables = self._tables
        for table in TABLES:
            if table in _UNHASHED:
                continue  # their rows hash to 0
            for key, value in txn.cursor(db=tables[table]).iternext():
                total += row_hash(table, key, value)
        return total % _digest.MODULUS

    # --- writing -------------------------------------------------------

    def persist(self, persist: Persist, sync: bool | None = None) -> None:
        """Store ``persist`` (promised ballot, accepted entries, chosen point)
        in the acceptor environment, in one transaction.

        ``sync`` (default ``persist.must_sync``): when true, it is on disk
        when this returns; when false (a moved chosen point alone) a power
        loss may undo it until the next synced persist. All or nothing: if
        anything raises, neither the disk nor this object changes; a full
        disk or an I/O error raises ``StorageUnavailable`` and the same
        persist may be retried later.
        """
        if persist.empty:
            return
        promised = self._promised
        chosen_below = self._chosen_below
        txn = self._begin_acceptor_write()
        dbs = self._acc.dbs
        try:
            if persist.promised is not None:
                assert persist.promised >= promised, (persist.promised, promised)
                promised = persist.promised
                txn.put(_K_PROMISED, self._packer.pack(list(promised)), db=dbs[_ACCEPTOR_DB])
            if persist.accepted:
                pack = self._packer.pack
                items = [
                    (slot.to_bytes(8, "big"), pack([ballot[0], ballot[1], value]))
                    for slot, ballot, value in persist.accepted
                ]
                txn.cursor(db=dbs[_LOG_DB]).putmulti(items)
            if persist.chosen_below is not None:
                assert persist.chosen_below >= chosen_below, (persist.chosen_below, chosen_below)
                chosen_below = persist.chosen_below
                txn.put(_K_CHOSEN, _int8(chosen_below), db=dbs[_META_DB])
            txn.commit()
        except BaseException as e:
            self._acc.fail_write("persist", txn, e)
            raise
        self._promised = promised
        self._chosen_below = chosen_below
        if persist.must_sync if sync is None else sync:
            self._acc.sync("persist")

    def apply(self, apply: Callable[[LmdbTables], int], sync: bool = False, commit: bool = True) -> None:
        """Apply chosen slots to the state environment.

        Calls ``apply(tables)`` with an ``LmdbTables`` bound to the state's
        write transaction: the caller applies chosen entries (already
        persisted) through it and returns the new applied point, which is
        stored with the new state digest. Then, if ``commit``, commits: its
        data pages are synced, its meta page only when ``sync`` (a power loss
        may otherwise undo this commit, and only as a whole, until the next
        one: the log still holds its slots). Without ``commit`` the
        transaction stays open and the next ``apply`` goes on in it
        (``applying_below`` is its applied point; readers, ``applied_below``
        and ``state_digest`` see only committed applies), so that one commit
        writes the pages of several applies, each page once.

        If anything raises (the callback included), the whole open
        transaction is aborted, earlier uncommitted applies with it: the
        state is as last committed (``applying_below == applied_below``),
        and the caller applies again from there. A full disk or an I/O error
        raises ``StorageUnavailable``; an exception from the callback
        propagates unchanged. ``tables`` must not be used after return.
        """
        txn = self._state_txn
        if txn is None:
            txn = self._state_txn = self._begin_state_write()
        applied_below = self._applying_below
        meta = self._state.dbs[_META_DB]
        try:
            tables = LmdbTables(txn, self._tables, self._applying_digest)
            new_applied = apply(tables)
            assert isinstance(new_applied, int), new_applied
            assert new_applied >= applied_below, (new_applied, applied_below)
            digest = tables.digest
            if commit or new_applied != applied_below or digest != self._applying_digest:
                txn.put(_K_APPLIED, _int8(new_applied), db=meta)
                txn.put(_K_DIGEST, digest.to_bytes(32, "big"), db=meta)
            if commit:
                self._state_txn = None
                txn.commit()
        except BaseException as e:
            self._state_txn = None
            self._applying_below, self._applying_digest = self._applied_below, self._digest
            self._state.fail_write("apply", txn, e)
            raise
        self._applying_below, self._applying_digest = new_applied, digest
        if commit:
            self._applied_below, self._digest = new_applied, digest
            if sync:
                self._state.sync("apply")

    @property
    def applying_below(self) -> int:
        """The applied point of the open apply transaction (``applied_below``
        when none is open)."""
        return self._applying_below

    @property
    def apply_open(self) -> bool:
        """Whether an apply transaction is open (applies not yet committed)."""
        return self._state_txn is not None

    def abort_apply(self) -> None:
        """Drop the open apply transaction, if any, with the applies it holds
        (call it on the thread that applies)."""
        txn, self._state_txn = self._state_txn, None
        if txn is not None:
            _abort_quietly(txn)
            self._applying_below, self._applying_digest = self._applied_below, self._digest

    def write_step(
        self,
        persist: Persist,
        apply: Callable[[LmdbTables], int] | None = None,
        sync: bool | None = None,
    ) -> None:
        """``persist(persist, sync)``, then ``apply(apply)`` if given (synced
        too when ``sync`` is true): the acceptor state first, so nothing is
        applied before the acceptance it rests on is stored. With no apply
        transaction left open, each half is all or nothing; if the apply
        raises, the persist stays done, and doing the same step again is
        harmless."""
        self.persist(persist, sync)
        if apply is not None:
            self.apply(apply, sync=bool(sync))

    def compact_log(self, below_slot: int, memberships: tuple = ()) -> None:
        """Drop log entries below ``below_slot`` and move ``log_start`` there.

        Only applied slots may go (a snapshot holds their effect), so
        ``below_slot <= applied_below``; the state is synced first, so the
        dropped slots stay applied through a power loss. Moving backwards is
        a no-op. ``memberships`` is the membership history as of
        ``below_slot`` (``Replica.membership_for_snapshot``): the dropped log
        held the membership values, so it is stored in the same transaction.
        Empty means the configured initial membership still holds.
        """
        assert below_slot <= self._applied_below, (below_slot, self._applied_below)
        if below_slot <= self._log_start:
            return
        self._state.sync("compact_log")
        self._truncate_log("compact_log", below_slot, memberships or None, self._chosen_below)

    def _truncate_log(self, op: str, below_slot: int, memberships: tuple | None, chosen_below: int) -> None:
        """One acceptor transaction: drop log entries below ``below_slot``,
        move ``log_start`` there, store ``memberships`` (None: keep the
        stored history) and ``chosen_below``."""
        end = _int8(below_slot)
        txn = self._begin_acceptor_write()
        dbs = self._acc.dbs
        try:
            cursor = txn.cursor(db=dbs[_LOG_DB])
            while cursor.first() and cursor.key() < end:
                cursor.delete()
            meta = txn.cursor(db=dbs[_META_DB])
            meta.put(_K_LOG_START, end)
            meta.put(_K_CHOSEN, _int8(chosen_below))
            if memberships is not None:
                meta.put(_K_MEMBERSHIPS, _encode_memberships(memberships))
            txn.commit()
        except BaseException as e:
            self._acc.fail_write(op, txn, e)
            raise
        self._log_start = below_slot
        self._chosen_below = chosen_below

    # --- snapshots -----------------------------------------------------
    #
    # The state tables ARE the snapshot: they hold exactly the effect of the
    # slots below ``applied_below``. Taking a snapshot therefore copies
    # nothing; it records (applied_below, membership history, digest) by
    # compacting the log up to it. A peer that needs the snapshot gets it
    # streamed from one read transaction (a consistent view of the tables,
    # the applied point and the digest), spools it to
    # ``INCOMING_SNAPSHOT_FILE`` and installs it with ``install_snapshot``:
    # one synced transaction of the state (rows, applied point, and the
    # snapshot's index and membership history), then one of the acceptor
    # (log start, chosen point, history). A crash of either side leaves at
    # most a stale spool file, which the next transfer truncates, or an
    # installed state whose acceptor half the next open finishes.

    @contextlib.contextmanager
    def snapshot_source(self) -> Iterator[tuple[int, int, Iterator[bytes]]]:
        """A consistent snapshot of the applied state: ``(index, digest, chunks)``.

        ``index`` is the applied point the rows reflect, ``digest`` their
        state digest; ``chunks`` yields msgpack frames ``[table, [[key,
        value], ...]]`` of about ``SNAPSHOT_CHUNK_BYTES``. The read
        transaction stays open (pinning old pages) until the context exits,
        so stream promptly. Chunks may be pulled from any one thread at a time.
        """
        txn = self._state.begin()
        try:
            meta = txn.cursor(db=self._state.dbs[_META_DB])
            index = _from_int8(meta.get(_K_APPLIED))
            digest = _from_int8(meta.get(_K_DIGEST))
            tables = self._tables

            def chunks() -> Iterator[bytes]:
                pack = msgpack.Packer().pack
                for table in TABLES:
                    rows: list[tuple[bytes, bytes]] = []
                    size = 0
                    for key, value in txn.cursor(db=tables[table]).iternext():
                        rows.append((key, value))
                        size += len(key) + len(value) + 8
                        if size >= SNAPSHOT_CHUNK_BYTES:
                            yield pack([table, rows])
                            rows, size = [], 0
                    if rows:
                        yield pack([table, rows])

            yield index, digest, chunks()
        finally:
            txn.abort()

    def incoming_snapshot_path(self) -> str:
        return os.path.join(self.path, INCOMING_SNAPSHOT_FILE)

    def install_snapshot(self, spool_path: str, index: int, digest: int, memberships: tuple) -> None:
        """Replace the state with a received snapshot.

        ``spool_path`` holds the snapshot's chunks, each prefixed with its
        length (4 B big-endian), as ``snapshot_source`` produced them. The
        rows replace every state table; the applied point, log start and
        (if behind) chosen point move to ``index``; log entries below it go;
        the membership history becomes ``memberships``. The rows must hash to
        ``digest``, else ``SnapshotMismatch`` and nothing changes. A crash
        before the state's commit leaves the old state intact; one after it
        leaves the new state, whose acceptor half the next open completes.
        """
        assert index > self._applied_below, (index, self._applied_below)
        assert self._state_txn is None, "install_snapshot with applies not committed"
        txn = self._begin_state_write()
        tables = self._tables
        try:
            for db in tables.values():
                txn.drop(db, delete=False)
            total = 0
            row_hash = _digest.row_hash
            with open(spool_path, "rb") as f:
                while True:
                    head = f.read(4)
                    if not head:
                        break
                    size = int.from_bytes(head, "big")
                    body = f.read(size)
                    if len(head) != 4 or len(body) != size:
                        raise SnapshotMismatch(f"{spool_path}: truncated snapshot chunk")
                    table, rows = msgpack.unpackb(body, use_list=False)
                    if table not in tables:
                        raise SnapshotMismatch(f"snapshot names an unknown table {table!r}")
                    for key, value in rows:
                        total += row_hash(table, key, value)
                    _, added = txn.cursor(db=tables[table]).putmulti(rows, append=True)
                    if added != len(rows):
                        raise SnapshotMismatch(f"snapshot rows of {table!r} out of order")
            total %= _digest.MODULUS
            if total != digest:
                raise SnapshotMismatch(
                    f"snapshot at {index}: rows hash to {_digest.to_hex(total)}, "
                    f"its sender stated {_digest.to_hex(digest)}"
                )
            meta = txn.cursor(db=self._state.dbs[_META_DB])
            end = _int8(index)
            meta.put(_K_APPLIED, end)
            meta.put(_K_DIGEST, digest.to_bytes(32, "big"))
            meta.put(_K_SNAPSHOT_INDEX, end)
            meta.put(_K_SNAPSHOT_MEMBERSHIPS, _encode_memberships(memberships))
            txn.commit()
        except BaseException as e:
            self._state.fail_write("install_snapshot", txn, e)
            raise
        self._applied_below = self._applying_below = index
        self._digest = self._applying_digest = digest
        self._state.sync("install_snapshot")
        self._finish_install(index, memberships)

    def _finish_install(self, index: int, memberships: tuple) -> None:
        """The acceptor half of installing a snapshot at ``index``."""
        self._truncate_log("install_snapshot", index, memberships, max(self._chosen_below, index))
        self._acc.sync("install_snapshot")

    def log_bytes(self) -> int:
        """Bytes of log entries stored (keys and values), from the log's B-tree stats."""
        with self._acc.begin() as txn:
            st = txn.stat(self._acc.dbs[_LOG_DB])
        return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]

    def file_bytes(self) -> int:
        """Size of the two LMDB data files on disk."""
        return data_file_bytes(self.path)


def data_file_bytes(path: str | os.PathLike[str]) -> int:
    """Size on disk of a replica directory's two LMDB data files (state and
    acceptor log); readable while a replica runs."""
    total = 0
    for sub in ("", ACCEPTOR_DIR):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(os.path.join(path, sub, "data.mdb"))
    return total


def _encode_memberships(memberships: tuple) -> bytes:
    return msgpack.packb([[e, list(v), list(l)] for e, v, l in memberships])


def _decode_memberships(raw: bytes) -> tuple:
    return tuple((e, tuple(v), tuple(l)) for e, v, l in msgpack.unpackb(raw))


def _abort_quietly(txn: lmdb.Transaction) -> None:
    # After a failed commit LMDB has already freed the transaction; abort is
    # then a no-op or reports that, and the original error is what matters.
    with contextlib.suppress(lmdb.Error):
        txn.abort()


# --- benchmark -------------------------------------------------------------


def _bench(directory: str | None) -> None:
    """Synced LMDB commits of small rows, raw and through ``write_step``.

    Raw: 16-byte keys, 64-byte values, one ``putmulti`` per transaction, keys
    either ascending (appends: log slots, timestamps) or random (ids), into a
    table that grows as the run goes. The random case is slower because each
    row dirties a different leaf page, all of which the commit writes.
    """
    import shutil
    import tempfile
    import time

    base = tempfile.mkdtemp(prefix="storage-bench-", dir=directory or os.getcwd())
    value = b"v" * 64
    try:
        print(f"scratch directory: {base}")
        env = lmdb.open(os.path.join(base, "raw0"), map_size=8 << 30, max_dbs=2, sync=True,
                        metasync=True, writemap=False)
        db = env.open_db(b"rows")
        commits = 500
        t0 = time.perf_counter()
        for i in range(commits):
            with env.begin(write=True) as txn:
                txn.put(b"k", _int8(i), db=db)
        dt = time.perf_counter() - t0
        env.close()
        print(f"raw synced commit of 1 row: {dt / commits * 1e6:.0f} us")

        for keys in ("ascending", "random"):
            for rows_per_txn, commits in ((1_000, 200), (8_000, 40)):
                env = lmdb.open(os.path.join(base, f"raw-{keys}-{rows_per_txn}"), map_size=8 << 30,
                                max_dbs=2, sync=True, metasync=True, writemap=False)
                db = env.open_db(b"rows")
                n = 0
                spent = 0.0
                for _ in range(commits):
                    if keys == "random":
                        items = [(os.urandom(16), value) for _ in range(rows_per_txn)]
                    else:
                        items = [((n + i).to_bytes(16, "big"), value) for i in range(rows_per_txn)]
                    t0 = time.perf_counter()
                    with env.begin(write=True) as txn:
                        txn.cursor(db=db).putmulti(items)
                    spent += time.perf_counter() - t0
                    n += rows_per_txn
                env.close()
                print(
                    f"raw, {keys:9s} keys, {rows_per_txn:5d} rows/commit: {commits / spent:6.0f} commits/s "
                    f"{n / spent:9.0f} rows/s ({spent / commits * 1e3:6.2f} ms/commit, {n} rows at end)"
                )

        # The replica's path: accepts into the log, then applied rows with
        # digest upkeep, one transaction per step.
        for rows_per_txn, steps in ((1_000, 100), (8_000, 25)):
            storage = ReplicaStorage(os.path.join(base, f"replica-{rows_per_txn}"),
                                     cluster_id="bench", replica_id=1)
            ballot = Ballot(1, 1)
            slot = 0
            spent = 0.0
            for _ in range(steps):
                entries = tuple((slot + i, ballot, value) for i in range(rows_per_txn))
                keys = [os.urandom(16) for _ in range(rows_per_txn)]
                first = slot

                def apply(tables: LmdbTables) -> int:
                    for key in keys:
                        tables.put(b"transfers", key, value)
                    return first + rows_per_txn

                t0 = time.perf_counter()
                storage.write_step(Persist(accepted=entries, chosen_below=slot + rows_per_txn), apply)
                spent += time.perf_counter() - t0
                slot += rows_per_txn
            storage.close()
            print(
                f"write_step, {rows_per_txn:5d} accepts + {rows_per_txn:5d} random-key puts: "
                f"{steps / spent:5.0f} steps/s {slot / spent:8.0f} slots/s "
                f"({spent / steps * 1e3:6.2f} ms/step)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="measure synced commit rates")
    parser.add_argument("--dir", help="directory for the scratch database (default: cwd)")
    args = parser.parse_args()
    if args.bench:
        _bench(args.dir)
    else:
        parser.print_help()
