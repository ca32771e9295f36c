"""An in-memory twin of the ledger, just enough to apply a booking plan.

It applies ``ta.postings`` chains with the ledger's rules that the TA relies
on, so the plan and the day's checks can be tested without replicas:

- a chain is all-or-nothing (linked);
- an id already booked with the same content answers ``exists`` and changes
  nothing (a re-run books nothing twice); with other content it fails;
- both accounts must exist and share the posting's ledger;
- a never-negative account's debits (pending + posted) must not exceed its
  credits (posted);
- a pending posting reserves; POST/VOID resolve it exactly once.

It is a test twin, not the ledger: the replicated ledger's state machine
(``ledger/``) is the authority on these rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable

from ta.postings import AccountSpec, Chain, Posting, PostingKind


class ChainResult(enum.Enum):
    OK = "ok"
    EXISTS = "exists"  # every posting was already booked identically
    FAILED = "failed"  # nothing of the chain was booked


@dataclass
class Balance:
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass
class MemoryLedger:
    accounts: dict[int, AccountSpec] = field(default_factory=dict)
    balances: dict[int, Balance] = field(default_factory=dict)
    postings: dict[int, Posting] = field(default_factory=dict)
    open_pending: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)  # ids in booking order

    def create_accounts(self, specs: Iterable[AccountSpec]) -> None:
        for spec in specs:
            existing = self.accounts.get(spec.id)
            assert existing is None or existing == spec, f"account {spec.id:x} differs"
            self.accounts[spec.id] = spec
            self.balances.setdefault(spec.id, Balance())

    def balance(self, account: AccountSpec | int) -> int:
        """Posted credits - posted debits (negate for debit-normal accounts)."""
        b = self.balances[account if isinstance(account, int) else account.id]
        return b.credits_posted - b.debits_posted

    def apply(self, chain: Chain) -> ChainResult:
        """Book ``chain`` all-or-nothing."""
        if chain and all(self.postings.get(p.id) == p for p in chain):
            return ChainResult.EXISTS
        saved = (
            {k: Balance(**vars(v)) for k, v in self.balances.items()},
            dict(self.postings),
            set(self.open_pending),
            list(self.order),
        )
        for posting in chain:
            if not self._apply_one(posting):
                self.balances, self.postings, self.open_pending, self.order = saved
                return ChainResult.FAILED
        return ChainResult.OK

    def _apply_one(self, p: Posting) -> bool:
        if p.id in self.postings:
            return self.postings[p.id] == p
        debit = self.accounts.get(p.debit_account_id)
        credit = self.accounts.get(p.credit_account_id)
        if debit is None or credit is None or not debit.ledger == credit.ledger == p.ledger:
            return False
        d, c = self.balances[debit.id], self.balances[credit.id]
        if p.kind is PostingKind.PENDING:
            d.debits_pending += p.amount
            c.credits_pending += p.amount
            self.open_pending.add(p.id)
        elif p.kind in (PostingKind.POST_PENDING, PostingKind.VOID_PENDING):
            pending = self.postings.get(p.pending_id)
            if pending is None or p.pending_id not in self.open_pending:
                return False
            if (pending.debit_account_id, pending.credit_account_id, pending.amount) != (
                p.debit_account_id, p.credit_account_id, p.amount,
            ):  # fmt: skip
                return False
            self.open_pending.discard(p.pending_id)
            d.debits_pending -= p.amount
            c.credits_pending -= p.amount
            if p.kind is PostingKind.POST_PENDING:
                d.debits_posted += p.amount
                c.credits_posted += p.amount
        else:
            d.debits_posted += p.amount
            c.credits_posted += p.amount
        if debit.never_negative and d.debits_pending + d.debits_posted > d.credits_posted:
            return False
        self.postings[p.id] = p
        self.order.append(p.id)
        return True

    def totals_by_ledger(self) -> dict[int, tuple[int, int]]:
        """(total posted debits, total posted credits) per ledger."""
        out: dict[int, tuple[int, int]] = {}
        for account_id, b in self.balances.items():
            ledger = self.accounts[account_id].ledger
            debits, credits = out.get(ledger, (0, 0))
            out[ledger] = (debits + b.debits_posted, credits + b.credits_posted)
        return out
