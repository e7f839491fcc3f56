"""Glue between `CaConfig` and the key custody: file keys, or a session on the HSM token."""

from __future__ import annotations

import logging

from ca_server.authority.custody import FILE_CUSTODY, HsmCustody, KeyCustody
from ca_server.config import CaConfig

log = logging.getLogger(__name__)


def open_custody(config: CaConfig, *, worker: bool = False) -> KeyCustody:
    """The supervisor's custody checks everything now (an `HsmConfigError` stops the start,
    exit 2). A worker opens its own session and log-in; if that fails it serves UNAVAILABLE
    and reconnects on demand, as after a lost session."""
    settings = config.pkcs11
    if settings is None:
        return FILE_CUSTODY
    from ca_server.hsm.errors import HsmConfigError

    token = settings.token(outage_level=logging.DEBUG if worker else logging.ERROR)
    if not worker:
        token.open()
        custody = HsmCustody(token, settings.key)
        custody.initial_key()  # the configured key exists, signs, and stays in the HSM
        return custody
    try:
        token.open()
    except HsmConfigError as exc:
        log.warning("worker could not open its HSM session yet (%s); retrying on demand", exc)
    return HsmCustody(token, settings.key, verify=False)


def close_custody(custody: KeyCustody) -> None:
    if isinstance(custody, HsmCustody):
        custody.token.close()


__all__ = ["close_custody", "open_custody"]
