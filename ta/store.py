"""Where the TA keeps everything: the ledger store (balances and KV), behind one interface.

The TA services keep no state of their own: balances live on the ledger's
accounts, and reference data, the flow table, imported files, order digests,
plans and results live in its key-value space. So a service can crash and
start again anywhere and carry on from the store.

``Store`` is the one interface; two implementations:

``TwinStore``     the ledger's own deterministic state machine
                  (``ledger.state_machine.LedgerStateMachine``) over
                  ``ledger.tables.MemoryTables``, in process: the same rules
                  the replicas apply, for fast tests.
``ClusterStore``  the replicated cluster through ``ledger.client.Client``
                  (leader discovery, idempotent retries); one client per
                  thread so parallel workers really run in parallel.

Both answer ``create_*`` with one result code per event (0 ``ok``), split
requests at the ledger's limit of 8,190 events, and page KV ranges.

Helpers below turn the TA's booking plan (``ta.postings``) into ledger
accounts and linked transfer chains, and store values larger than one KV
value (1 MiB) as numbered chunks.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator, Protocol, Sequence

import msgpack

from ledger.codes import CreateAccountResult, CreateTransferResult, KvResult
from ledger.model import Account, AccountFlags, Transfer, TransferFlags
from ta.postings import AccountSpec, Posting, PostingKind

EVENTS_PER_REQUEST_MAX = 8190
IDS_PER_LOOKUP_MAX = 8190
KV_PAGE_MAX = 1000
CHUNK_BYTES_MAX = 256_000  # well under the 1 MiB KV value limit: big values slow replication
PUT_THREADS = 2
OUTCOME_RETRIES = 5

OK = 0
ACCOUNT_EXISTS = int(CreateAccountResult.EXISTS)
TRANSFER_EXISTS = int(CreateTransferResult.EXISTS)
LINKED_EVENT_FAILED = int(CreateTransferResult.LINKED_EVENT_FAILED)


class StoreError(Exception):
    """The store refused something the TA relies on (a bug or a corrupted store)."""


class Store(Protocol):
    def create_accounts(self, accounts: Sequence[Account]) -> list[int]: ...

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[int]: ...

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...

    def kv_get(self, key: bytes) -> tuple[bytes, int] | None: ...

    def kv_put(self, key: bytes, value: bytes) -> int: ...

    def kv_put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...

    def kv_cas(self, key: bytes, expected_version: int, value: bytes) -> tuple[bool, int]: ...

    def kv_delete(self, key: bytes) -> bool: ...

    def kv_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes, int]]: ...

    def close(self) -> None: ...


def _pieces(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- twin


class TwinStore:
    """The ledger state machine in process (see the module docstring).

    Each call is one batch with the next timestamp; a lock makes calls from
    worker threads one at a time, as the replicas' log would."""

    def __init__(self) -> None:
        from ledger.state_machine import LedgerStateMachine
        from ledger.tables import MemoryTables

        self.tables = MemoryTables()
        self.machine = LedgerStateMachine(self.tables)
        self._lock = threading.Lock()
        self._clock_ns = 1_000_000_000
        self.batches = 0

    def _apply(self, commands: list) -> list:
        from ledger.commands import encode_batch

        with self._lock:
            self._clock_ns += 1_000_000
            self.batches += 1
            return self.machine.apply_batch(encode_batch(self._clock_ns, commands))

    def _create(self, command_type, rows: Sequence) -> list[int]:
        codes: list[int] = []
        for piece in _pieces(list(rows), EVENTS_PER_REQUEST_MAX):
            dense = [OK] * len(piece)
            for index, code in self._apply([command_type.of(piece)])[0]:
                dense[index] = int(code)
            codes += dense
        return codes

    def create_accounts(self, accounts: Sequence[Account]) -> list[int]:
        from ledger.commands import CreateAccounts

        return self._create(CreateAccounts, accounts)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[int]:
        from ledger.commands import CreateTransfers

        return self._create(CreateTransfers, transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        with self._lock:
            return self.machine.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        with self._lock:
            return self.machine.lookup_transfers(ids)

    def kv_get(self, key: bytes) -> tuple[bytes, int] | None:
        with self._lock:
            found = self.machine.kv_get(key)
        return None if found is None else (found[1], found[0])

    def kv_put(self, key: bytes, value: bytes) -> int:
        from ledger.commands import KvPut

        outcome = self._apply([KvPut(key, value)])[0]
        if outcome.result != KvResult.OK:
            raise StoreError(f"kv put {key!r}: {outcome.result.name}")
        return outcome.version

    def kv_put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        from ledger.commands import KvPut

        for piece in _pieces(list(items), 64):
            outcomes = self._apply([KvPut(k, v) for k, v in piece])
            bad = [o for o in outcomes if o.result != KvResult.OK]
            if bad:
                raise StoreError(f"kv put: {bad[0].result.name}")

    def kv_cas(self, key: bytes, expected_version: int, value: bytes) -> tuple[bool, int]:
        from ledger.commands import KvCas

        outcome = self._apply([KvCas(key, expected_version, value)])[0]
        if outcome.result not in (KvResult.OK, KvResult.VERSION_MISMATCH, KvResult.NOT_FOUND):
            raise StoreError(f"kv cas {key!r}: {outcome.result.name}")
        return outcome.result == KvResult.OK, outcome.version

    def kv_delete(self, key: bytes) -> bool:
        from ledger.commands import KvDelete

        return self._apply([KvDelete(key)])[0].result == KvResult.OK

    def kv_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        start, end = prefix, _prefix_end(prefix)
        while True:
            with self._lock:
                page = self.machine.kv_range(start=start, end=end, limit=KV_PAGE_MAX)
            for key, version, value in page:
                yield key, value, version
            if len(page) < KV_PAGE_MAX:
                return
            start = page[-1][0] + b"\x00"

    def transfer_count(self) -> int:
        """Transfers in the ledger (tests: a re-run books nothing new)."""
        return sum(1 for _ in self.tables.range(b"transfers", b"", None, 1 << 62))

    def close(self) -> None:
        pass


def _prefix_end(prefix: bytes) -> bytes | None:
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# ---------------------------------------------------------------- cluster


class ClusterStore:
    """The replicated ledger through ``ledger.client.Client``, one client per thread."""

    def __init__(self, addresses: Sequence[str], timeout_s: float = 30.0, tls=None) -> None:
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.tls = tls  # ledger.client.TlsCredentials of the client identity, or None
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()

    @classmethod
    def for_topology(cls, path: str, **kwargs) -> "ClusterStore":
        from ledger.client import topology_args

        (addresses,) = topology_args(path, "client", kwargs)
        return cls(addresses, **kwargs)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from ledger.client import Client

            client = Client(self.addresses, timeout_s=self.timeout_s, attempt_timeout_s=10.0, tls=self.tls)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def create_accounts(self, accounts: Sequence[Account]) -> list[int]:
        codes: list[int] = []
        for piece in _pieces(list(accounts), EVENTS_PER_REQUEST_MAX):
            codes += [r.code for r in self._client().create_accounts(piece)]
        return codes

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[int]:
        codes: list[int] = []
        for piece in _pieces(list(transfers), EVENTS_PER_REQUEST_MAX):
            codes += [r.code for r in self._client().create_transfers(piece)]
        return codes

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        found: list[Account] = []
        for piece in _pieces(list(ids), IDS_PER_LOOKUP_MAX):
            found += self._client().lookup_accounts(piece)
        return found

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        found: list[Transfer] = []
        for piece in _pieces(list(ids), IDS_PER_LOOKUP_MAX):
            found += self._client().lookup_transfers(piece)
        return found

    def kv_get(self, key: bytes) -> tuple[bytes, int] | None:
        return self._client().kv_get(key)

    def kv_put(self, key: bytes, value: bytes) -> int:
        # The TA's puts are idempotent by content (the same key always gets
        # the same value on a retry), so an unknown outcome is retried.
        from ledger import errors

        for _ in range(OUTCOME_RETRIES):
            try:
                return self._client().kv_put(key, value)
            except errors.OutcomeUnknown:
                continue
        return self._client().kv_put(key, value)

    def kv_put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Puts in parallel (the leader commits concurrent requests together)."""
        if len(items) <= 1:
            for key, value in items:
                self.kv_put(key, value)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(PUT_THREADS, len(items))) as pool:
            for f in [pool.submit(self.kv_put, k, v) for k, v in items]:
                f.result()

    def kv_cas(self, key: bytes, expected_version: int, value: bytes) -> tuple[bool, int]:
        """An unknown outcome is settled by reading the key back: the TA's
        CAS values are unique per write (they carry a counter), so finding
        our value there means our write landed; finding the expected version
        still there means nothing landed (versions are never reused), so the
        write is tried again."""
        from ledger import errors

        for _ in range(OUTCOME_RETRIES):
            try:
                return self._client().kv_cas(key, expected_version, value)
            except errors.OutcomeUnknown:
                found = self.kv_get(key)
                if found is not None and found[0] == value:
                    return True, found[1]
                current = 0 if found is None else found[1]
                if current != expected_version:
                    return False, current
        return self._client().kv_cas(key, expected_version, value)

    def kv_delete(self, key: bytes) -> bool:
        from ledger import errors

        try:
            return self._client().kv_delete(key)
        except errors.OutcomeUnknown:
            return self.kv_get(key) is None

    def kv_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        start = prefix
        end = _prefix_end(prefix) or b""
        while True:
            items, more = self._client().kv_range(start=start, end=end, limit=KV_PAGE_MAX)
            for key, value, version in items:
                yield key, value, version
            if not more or not items:
                return
            start = items[-1][0] + b"\x00"

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass


# ---------------------------------------------------------------- plan -> ledger


def account_of(spec: AccountSpec) -> Account:
    flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS if spec.never_negative else 0
    return Account(id=spec.id, ledger=spec.ledger, code=int(spec.code), flags=int(flags))


_KIND_FLAGS = {
    PostingKind.TRANSFER: 0,
    PostingKind.PENDING: int(TransferFlags.PENDING),
    PostingKind.POST_PENDING: int(TransferFlags.POST_PENDING_TRANSFER),
    PostingKind.VOID_PENDING: int(TransferFlags.VOID_PENDING_TRANSFER),
}


def transfers_of(chain: Sequence[Posting]) -> list[Transfer]:
    """One linked chain: every transfer but the last carries LINKED."""
    last = len(chain) - 1
    return [
        Transfer(
            id=p.id, debit_account_id=p.debit_account_id, credit_account_id=p.credit_account_id,
            amount=p.amount, ledger=p.ledger, code=int(p.code),
            flags=_KIND_FLAGS[p.kind] | (int(TransferFlags.LINKED) if i < last else 0),
            pending_id=p.pending_id,
        )
        for i, p in enumerate(chain)
    ]


def ensure_accounts(store: Store, specs: Iterable[AccountSpec]) -> None:
    """Create the accounts (idempotent: ``exists`` is success)."""
    unique = {s.id: s for s in specs}
    accounts = [account_of(s) for s in unique.values()]
    codes = store.create_accounts(accounts)
    bad = [(a.id, c) for a, c in zip(accounts, codes) if c not in (OK, ACCOUNT_EXISTS)]
    if bad:
        account_id, code = bad[0]
        raise StoreError(
            f"{len(bad)} accounts refused, first {account_id:032x}: "
            f"{CreateAccountResult(code).name.lower()}"
        )


def book_chains(store: Store, chains: Sequence[Sequence[Posting]]) -> list[int]:
    """Submit chains (each one linked group) in as few requests as fit; return
    per chain 0 if it is booked (now or earlier: ``exists``), else the ledger's
    first failure code. Chains never straddle two requests."""
    outcome: list[int] = []
    batch: list[Transfer] = []
    spans: list[tuple[int, int]] = []

    def flush() -> None:
        if not batch:
            return
        codes = store.create_transfers(batch)
        for start, end in spans:
            outcome.append(_chain_code(codes[start:end]))
        batch.clear()
        spans.clear()

    for chain in chains:
        if not chain:
            spans.append((len(batch), len(batch)))
            continue
        if len(batch) + len(chain) > EVENTS_PER_REQUEST_MAX:
            flush()
        spans.append((len(batch), len(batch) + len(chain)))
        batch.extend(transfers_of(chain))
    flush()
    if spans:  # only empty chains were left
        outcome.extend(OK for _ in spans)
    return outcome


def _chain_code(codes: Sequence[int]) -> int:
    if not codes:
        return OK
    real = [c for c in codes if c not in (OK, TRANSFER_EXISTS, LINKED_EVENT_FAILED)]
    if real:
        return real[0]
    if LINKED_EVENT_FAILED in codes and TRANSFER_EXISTS not in codes:
        return LINKED_EVENT_FAILED
    return OK


def transfer_result_name(code: int) -> str:
    try:
        return CreateTransferResult(code).name.lower()
    except ValueError:
        return f"code_{code}"


# ---------------------------------------------------------------- values


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def chunk_items(prefix: bytes, items: Sequence) -> list[tuple[bytes, bytes]]:
    """``items`` as numbered (key, value) chunks under ``prefix``, each under CHUNK_BYTES_MAX."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        raw = pack(item)
        if current and size + len(raw) > CHUNK_BYTES_MAX:
            chunks.append(_array(current))
            current, size = [], 0
        current.append(raw)
        size += len(raw)
    if current or not chunks:
        chunks.append(_array(current))
    return [(prefix + b"%06d" % n, chunk) for n, chunk in enumerate(chunks)]


def _array(packed: list[bytes]) -> bytes:
    n = len(packed)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(packed)


def put_chunks(store: Store, prefix: bytes, items: Sequence, fresh: bool = False) -> int:
    """Store ``items`` as numbered chunks under ``prefix``; drops stale chunks
    of a longer earlier write unless ``fresh`` (nothing was ever written
    there but this same content). Same items give the same chunks."""
    pairs = chunk_items(prefix, items)
    store.kv_put_many(pairs)
    if not fresh:
        for key, _, _ in list(store.kv_scan(prefix)):
            tail = key[len(prefix):]
            if tail.isdigit() and int(tail) >= len(pairs):
                store.kv_delete(key)
    return len(pairs)


def get_chunks(store: Store, prefix: bytes) -> list:
    items: list = []
    for key, value, _ in store.kv_scan(prefix):
        if key[len(prefix):].isdigit():
            items.extend(unpack(value))
    return items
