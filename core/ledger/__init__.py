"""Money and shared state: the `Ledger` (tokens reserved and settled per person and model) and the
`Store` (everything else replicas share), each a protocol with its implementations beside it.

The PostgreSQL ones are imported from their modules (`core.ledger.postgres`), not from here: their
driver takes a tenth of a second to load, which the admin commands on a SQLite ledger need not pay."""

from .memory import MemoryStore
from .protocol import (
    BudgetExceeded,
    DuplicateRequest,
    Ledger,
    LedgerError,
    LedgerWithStore,
    ModelQuotaExceeded,
    QuotaExceeded,
    Reservation,
    UsageRow,
    next_reset,
    time_until,
)
from .sqlite import SQLiteLedger
from .sqlite_store import SQLiteStore
from .store import CLAIM_SECONDS, Store

__all__ = [
    "CLAIM_SECONDS",
    "BudgetExceeded",
    "DuplicateRequest",
    "Ledger",
    "LedgerError",
    "LedgerWithStore",
    "MemoryStore",
    "ModelQuotaExceeded",
    "QuotaExceeded",
    "Reservation",
    "SQLiteLedger",
    "SQLiteStore",
    "Store",
    "UsageRow",
    "next_reset",
    "time_until",
]
