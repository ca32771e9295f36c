"""Errors of the replica server and the client, and their gRPC status codes.

    LedgerError                      base; never raised itself
    ├── RequestError                 the caller is at fault: fix the request
    │   ├── InvalidArgument          malformed field, bad 128-bit length, empty batch
    │   ├── BatchTooLarge            more events (or bytes) than one request may carry
    │   ├── Unauthenticated          no certificate of this cluster (mutual TLS)
    │   └── PermissionDenied         the caller's identity may not do this (admin only)
    ├── ClusterError                 the cluster cannot serve now: retry (same ids)
    │   ├── NotLeader                this replica does not lead; names the leader if known
    │   ├── Overloaded               the proposal queue is full; back off
    │   ├── OutcomeUnknown           leadership was lost after proposing; retry
    │   └── ReplicaStopped           this replica stopped accepting (disk full, I/O error)
    └── DeadlineExceeded             the caller's deadline passed (a write may have landed)

Per-event ledger results (``exists``, ``exceeds_credits``, ...) are *not*
errors: they travel as codes in the response. Bugs are not in this tree either:
they are assertions, and crash the replica.

``STATUS_CODES`` is the one place where these map to gRPC status codes;
``from_status`` is its inverse, used by the client.
"""

from __future__ import annotations

import grpc

LEADER_ID_KEY = "x-leader-id"
LEADER_ADDRESS_KEY = "x-leader-address"
ERROR_KIND_KEY = "x-error-kind"


class LedgerError(Exception):
    """Base of every error the server answers with and the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(LedgerError):
    """The request is wrong; retrying it unchanged gives the same answer."""


class InvalidArgument(RequestError):
    pass


class BatchTooLarge(RequestError):
    pass


class Unauthenticated(RequestError):
    pass


class PermissionDenied(RequestError):
    pass


class ClusterError(LedgerError):
    """The cluster could not serve the request now; retrying may succeed."""


class NotLeader(ClusterError):
    def __init__(self, message: str, leader_id: str = "", leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Overloaded(ClusterError):
    pass


class OutcomeUnknown(ClusterError):
    pass


class ReplicaStopped(ClusterError):
    pass


class DeadlineExceeded(LedgerError):
    pass


DEADLINE_PASSED = (
    "the deadline passed before the write was applied; it may still land: "
    "retry with the same ids (they make the retry idempotent)"
)


# The one mapping between the hierarchy and gRPC status codes.
STATUS_CODES: dict[type[LedgerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    BatchTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotLeader: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OutcomeUnknown: grpc.StatusCode.UNAVAILABLE,
    ReplicaStopped: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_BY_NAME: dict[str, type[LedgerError]] = {cls.__name__: cls for cls in STATUS_CODES}


def status_of(error: LedgerError) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The status code and trailing metadata a server answers ``error`` with."""
    code = STATUS_CODES[type(error)]
    metadata: list[tuple[str, str]] = [(ERROR_KIND_KEY, type(error).__name__)]
    if isinstance(error, NotLeader):
        if error.leader_id:
            metadata.append((LEADER_ID_KEY, error.leader_id))
        if error.leader_address:
            metadata.append((LEADER_ADDRESS_KEY, error.leader_address))
    return code, tuple(metadata)


def from_status(code: grpc.StatusCode, details: str, metadata) -> LedgerError | None:
    """The error a client raises for a failed call (None: not one of ours)."""
    md = {k: v for k, v in (metadata or ())}
    kind = _BY_NAME.get(md.get(ERROR_KIND_KEY, ""))
    if kind is NotLeader:
        return NotLeader(details, md.get(LEADER_ID_KEY, ""), md.get(LEADER_ADDRESS_KEY, ""))
    if kind is not None and STATUS_CODES[kind] == code:
        return kind(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        # gRPC's own message-size limit (either side): bad input, not overload; never retried.
        return InvalidArgument(f"the request is too large: {details}")
    fallback = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
        grpc.StatusCode.FAILED_PRECONDITION: ReplicaStopped,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    }.get(code)
    return fallback(details) if fallback else None


_STATUS_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def from_write_error(error) -> LedgerError | None:
    """The error a client raises for one write of a ``Ledger.Submit`` stream
    answered with a ``WriteError`` (its status, message and metadata are those
    of ``status_of``); None: not one of ours."""
    code = _STATUS_BY_NUMBER.get(error.status, grpc.StatusCode.UNKNOWN)
    return from_status(code, error.message, tuple(error.metadata.items()))
