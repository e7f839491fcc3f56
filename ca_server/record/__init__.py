"""The issuance record: the shape of an entry (`entry`), the lock on an SQLite record (`lock`), and the tamper-evident ledger that stores entries (`ledger/`)."""
