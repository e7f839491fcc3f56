"""Is this CA's clock inside the validity of its own CA certificates?

A CA whose clock runs behind its signing certificate's NotBefore (a plugged-in CA made on
a machine with the right time, NTP not synchronised here) cannot issue anything a client
will accept. The signer refuses with a retryable error (`ClockBehind`) instead of trying,
and the supervisor turns `/readyz` false; both say it is the clock, once per change.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from cryptography import x509

from ca_server.authority.material import CaMaterial
from certs.values import format_duration

log = logging.getLogger(__name__)


def signing_path(material: CaMaterial) -> list[tuple[str, x509.Certificate]]:
    """The certificates a leaf's path runs through, named for a message: the signing
    certificate, the intermediates after it and the root it ends at."""
    if material.signing_cert in material.roots:
        return [("root", material.signing_cert)]
    path: list[tuple[str, x509.Certificate]] = [("signing certificate", material.signing_cert)]
    path += [("intermediate", c) for c in material.chain if c != material.signing_cert]
    top = path[-1][1]
    anchors = [r for r in material.roots if r.subject == top.issuer]
    if anchors:  # any one of them completes the path: the earliest-valid one counts
        path.append(("root", min(anchors, key=lambda r: r.not_valid_before_utc)))
    return path


def valid_from(material: CaMaterial) -> tuple[datetime, str]:
    """When every certificate of the signing path is valid, and which one starts last."""
    name, cert = max(signing_path(material), key=lambda item: item[1].not_valid_before_utc)
    return cert.not_valid_before_utc, name


def clock_problem(material: CaMaterial, now: datetime) -> str | None:
    """None while `now` is inside the signing path's validity start; else the sentence that
    says this CA's clock is behind it (for logs and `/readyz`: no file names, no keys)."""
    start, name = valid_from(material)
    if now >= start:
        return None
    return (
        f"this CA's clock ({now.isoformat(timespec='seconds')}) is before the validity of its "
        f"own {name} (valid from {start.isoformat(timespec='seconds')}, "
        f"{format_duration((start - now).total_seconds())} later): nothing it signs would be "
        "accepted; check the clock and NTP on this machine"
    )


class ClockWatch:
    """`check` says whether the clock is inside the CA's validity, logging each change once
    (an error when it falls behind, a note when it is fine again). Cheap on the signing path:
    the validity start is computed once per material."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._problem: str | None = None
        self._start: tuple[CaMaterial, datetime] | None = None
        self._lock = threading.Lock()

    def check(self, material: CaMaterial, now: datetime) -> str | None:
        start = self._start
        if start is None or start[0] is not material:
            start = self._start = (material, valid_from(material)[0])
        if now >= start[1] and self._problem is None:
            return None
        problem = clock_problem(material, now)
        with self._lock:
            was, self._problem = self._problem, problem
        if problem is not None and was is None:
            self._log.error("%s; answering UNAVAILABLE until it is", problem)
        elif problem is None and was is not None:
            self._log.warning("this CA's clock is inside its CA certificates' validity again")
        return problem
