"""An SQLite record belongs to one CA process: `<record>.lock`, flocked before any worker opens it.

Two CAs with their own data dirs but the same `--record sqlite:///...` file would each
chain rows onto the file without seeing the other's head (SQLite's own locking keeps
the file intact, not the hash chain or the seq order). The supervisor takes an exclusive
`flock` on `<record file>.lock` before it or any worker opens the record, and holds it
for its whole life; a second CA stops with exit 2 naming the file. More than one replica
needs a PostgreSQL record. PostgreSQL records are shared on purpose and are not locked.
"""

from __future__ import annotations

from pathlib import Path

from ca_server.config import CaConfig
from ca_server.datadir import DataDirLock, exclusive_lock
from ca_server.record.ledger import RecordUrlError, default_record_url, parse_record_url


def sqlite_record_file(config: CaConfig) -> Path | None:
    """The SQLite file the CA records into (absolute), or None for PostgreSQL or a bad URL
    (`check_record` reports a bad URL)."""
    try:
        parsed = parse_record_url(config.record or default_record_url(config.data_dir))
    except RecordUrlError:
        return None
    if parsed.dialect != "sqlite":
        return None
    return Path(parsed.target).resolve()


def lock_sqlite_record(config: CaConfig) -> DataDirLock | None:
    """Hold `<record>.lock` for an SQLite record; a `ConfigError` when another CA holds it."""
    record = sqlite_record_file(config)
    if record is None or not record.parent.is_dir():
        return None  # PostgreSQL, or a path check_record refuses with its own message
    return exclusive_lock(
        record.with_name(record.name + ".lock"),
        in_use=lambda who, path: (
            f"--record {record} is in use by another CA ({who}, lock {path}); an SQLite record "
            "is never shared: give this CA its own record, or use a PostgreSQL record "
            "(--record postgresql://...) to run more than one replica"
        ),
    )
