"""Where the CA slots persist: a set of named blobs (files in `<data-dir>/ca/`, or extra keys
of the Secret `istio-ca-secret`), written so that one write is the commit point.

Each authority is stored under names that contain its id (`authority-<id>-cert.pem`,
`-key.pem` 0600 or, with an HSM key, `-key.uri` naming it; `-chain.pem`, `-anchors.pem`); `slots.json` names which authority is in
which slot. A crash before `slots.json` is replaced leaves the old state whole; blobs no
longer named are removed after the commit. The classic names (`ca-cert.pem`, `ca-key.pem`,
`root-bundle.pem`) mirror the active authority and the bundle for tools and older readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ca_server.authority.custody import (
    FILE_CUSTODY,
    PEM_SUFFIX,
    URI_SUFFIX,
    KeyCustody,
    certificate_key,
)
from ca_server.authority.material import DirectoryKeyStore
from ca_server.authority.slots.model import Authority, Slot, SlotState
from ca_server.errors import ConfigError
from ca_server.hsm.errors import HsmError
from certs.errors import CertsError
from certs.files import write_atomic
from certs.pem import bundle_pem, load_certificates, to_pem

STATE_NAME = "slots.json"
STATE_VERSION = 1
ROLES = ("active", "prepared", "retired")
PREFIX = "authority-"


class SlotStore(Protocol):
    """Persists a `SlotState`; `load_state` returns None when no slot state was ever saved."""

    def load_state(self) -> SlotState | None: ...

    def save_state(self, state: SlotState) -> None: ...


def _names(authority_id: str) -> dict[str, str]:
    """The blob names of an authority; "key" is a stem, completed by the key's custody."""
    short = authority_id[:24]
    names = {part: f"{PREFIX}{short}-{part}.pem" for part in ("cert", "chain", "anchors")}
    return {**names, "key": f"{PREFIX}{short}-key"}


def encode_state(
    state: SlotState, custody: KeyCustody = FILE_CUSTODY
) -> tuple[dict[str, bytes], bytes]:
    """(authority blobs by name, the slots.json commit record)."""
    blobs: dict[str, bytes] = {}
    record: dict[str, object] = {"version": STATE_VERSION}
    for role in ROLES:
        slot: Slot | None = getattr(state, role)
        if slot is None:
            record[role] = None
            continue
        auth = slot.authority
        names = _names(auth.id)
        blobs[names["cert"]] = to_pem(auth.cert).encode()
        stored = custody.encode(auth.key)
        blobs[names["key"] + stored.suffix] = stored.data
        blobs[names["chain"]] = bundle_pem(auth.chain).encode()
        blobs[names["anchors"]] = bundle_pem(auth.anchors).encode()
        record[role] = {
            "id": auth.id,
            "since": slot.since.isoformat(),
            "until": slot.until.isoformat() if slot.until else None,
        }
    return blobs, json.dumps(record, indent=1, sort_keys=True).encode()


def decode_state(
    record: bytes, blobs: Mapping[str, bytes], where: str, custody: KeyCustody = FILE_CUSTODY
) -> SlotState:
    """The state `record` names, from `blobs`; a ConfigError names what is missing or bad."""
    try:
        data = json.loads(record)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("unknown version")
        slots = {role: _decode_slot(data.get(role), blobs, where, custody) for role in ROLES}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"CA slot state {STATE_NAME} in {where} is unreadable ({exc}); restore it from a backup"
        ) from None
    active = slots["active"]
    if active is None:
        raise ConfigError(f"CA slot state in {where} has no active CA")
    return SlotState(active=active, prepared=slots["prepared"], retired=slots["retired"])


def _decode_slot(
    entry: object, blobs: Mapping[str, bytes], where: str, custody: KeyCustody
) -> Slot | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError("a slot is not an object")
    names = _names(str(entry["id"]))
    stem = names.pop("key")
    missing = [n for n in names.values() if n not in blobs]
    if not any(stem + suffix in blobs for suffix in (PEM_SUFFIX, URI_SUFFIX)):
        missing.append(stem + PEM_SUFFIX)
    if missing:
        raise KeyError(f"{', '.join(missing)} missing")
    try:
        cert = load_certificates(blobs[names["cert"]], what=f"{where} {names['cert']}")[0]
        chain_pem = blobs[names["chain"]]
        chain = tuple(load_certificates(chain_pem)) if chain_pem.strip() else ()
        anchors = tuple(load_certificates(blobs[names["anchors"]]))
    except CertsError as exc:
        raise ValueError(str(exc)) from None
    key_blobs = {n: b for n, b in blobs.items() if n.startswith(stem)}
    try:
        key = custody.decode(key_blobs, stem, certificate_key(cert), where)
    except HsmError:
        raise  # the HSM's own message (missing key, token down) says more than "unreadable"
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    until = entry.get("until")
    return Slot(
        authority=Authority(cert=cert, key=key, chain=chain, anchors=anchors),
        since=datetime.fromisoformat(str(entry["since"])),
        until=datetime.fromisoformat(str(until)) if until else None,
    )


class DirectorySlotStore:
    """Slots in `<data-dir>/ca/`, beside (and mirrored into) the classic self-signed files."""

    def __init__(self, directory: Path, custody: KeyCustody = FILE_CUSTODY) -> None:
        self.directory = directory
        self.custody = custody
        self.classic = DirectoryKeyStore(directory, custody)

    def load_state(self) -> SlotState | None:
        path = self.directory / STATE_NAME
        if not path.exists():
            return None
        blobs = {
            p.name: p.read_bytes()
            for p in self.directory.iterdir()
            if p.name.startswith(PREFIX) and p.is_file()
        }
        return decode_state(path.read_bytes(), blobs, str(self.directory), self.custody)

    def save_state(self, state: SlotState) -> None:
        blobs, record = encode_state(state, self.custody)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, data in blobs.items():
            write_atomic(self.directory / name, data, mode=0o600 if "-key." in name else 0o644)
        write_atomic(self.directory / STATE_NAME, record)  # the commit point
        self.classic.replace(state.material("self-signed"))
        for path in self.directory.iterdir():
            if path.name.startswith(PREFIX) and path.name not in blobs:
                os.unlink(path)  # an authority that left every slot: its key goes too


__all__ = ["DirectorySlotStore", "SlotStore", "decode_state", "encode_state"]
