"""Money and shared state: the `Ledger` (tokens reserved and settled per person and model) and the
`Store` (everything else replicas share), each a protocol with its implementations beside it."""

from .memory import MemoryStore
from .sqlite import (
    BudgetExceeded,
    DuplicateRequest,
    Ledger,
    LedgerError,
    ModelQuotaExceeded,
    QuotaExceeded,
    Reservation,
    SQLiteLedger,
    UsageRow,
    next_reset,
    time_until,
)
from .store import CLAIM_SECONDS, Store

__all__ = [
    "CLAIM_SECONDS",
    "BudgetExceeded",
    "DuplicateRequest",
    "Ledger",
    "LedgerError",
    "MemoryStore",
    "ModelQuotaExceeded",
    "QuotaExceeded",
    "Reservation",
    "SQLiteLedger",
    "Store",
    "UsageRow",
    "next_reset",
    "time_until",
]
