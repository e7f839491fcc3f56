"""istiod's XDS serving certificate, issued by Bulwark into the Secret istiod reads.

With istiod's own CA off, istiod still serves XDS over TLS; cert-manager istio-csr's
convention is a `kubernetes.io/tls` Secret `istio-system/istiod-tls` with `tls.crt` (leaf,
then chain), `tls.key` and `ca.crt` (the root bundle), which istiod reads when it is mounted
at `/var/run/secrets/istiod/tls`. Bulwark signs that leaf with the key it signs workloads
with, so istiod and every workload chain to one root.

Only the leader writes (`is_leader()` is asked before every write). Every `interval` the
writer reads the Secret and issues a new certificate when it is missing or unreadable, past
half of its life, for other DNS names, not signed by the current signing certificate, or
when `ca.crt` is not the current root bundle (a root renewed or rotated).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.authority.material import CaMaterial
from ca_server.kube.settings import IstiodCertSettings
from certs.errors import CertsError
from certs.istio_files import TLS_CA, TLS_CERT, TLS_KEY
from certs.keys import load_private_key, spki_der
from certs.pem import load_certificates

log = logging.getLogger(__name__)

TLS_TYPE = "kubernetes.io/tls"
MANAGED_BY = ("app.kubernetes.io/managed-by", "bulwark")
FOLLOWER_POLL_SECONDS = 2.0


def renewal_reason(
    data: dict[str, str], material: CaMaterial, dns_names: tuple[str, ...], now: datetime
) -> str | None:
    """Why the Secret's certificate must be replaced, or None when it is current."""
    try:
        chain = load_certificates(_unb64(data.get(TLS_CERT, "")), what=TLS_CERT)
        key = load_private_key(_unb64(data.get(TLS_KEY, "")))
        ca_pem = _unb64(data.get(TLS_CA, "")).decode()
    except (CertsError, ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return "missing or unreadable"
    leaf = chain[0]
    if spki_der(key.public_key()) != spki_der(leaf.public_key()):  # type: ignore[arg-type]
        return f"{TLS_KEY} does not match {TLS_CERT}"
    try:
        leaf.verify_directly_issued_by(material.signing_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current signing certificate"
    if ca_pem != material.root_bundle_pem:
        return f"{TLS_CA} is not the current root bundle"
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no DNS names"
    if sorted(names.get_values_for_type(x509.DNSName)) != sorted(dns_names):
        return "DNS names differ from the configured ones"
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now >= start + (end - start) / 2:
        return "past half of its life"
    return None


def issue(
    material: CaMaterial, dns_names: tuple[str, ...], ttl: timedelta, now: datetime
) -> dict[str, str]:
    """A fresh key and serving certificate for istiod, as the Secret's base64 data."""
    issued = material.issue_server_certificate(now=now, ttl=ttl, dns_names=dns_names)
    return {
        TLS_CERT: _b64(issued.chain_pem),
        TLS_KEY: _b64(issued.key_pem),
        TLS_CA: _b64(material.root_bundle_pem.encode()),
    }


class IstiodCertWriter:
    """Keeps istiod's serving certificate current in its Secret while `is_leader()` holds."""

    def __init__(
        self,
        client: Client,
        settings: IstiodCertSettings,
        *,
        material: Callable[[], CaMaterial],
        is_leader: Callable[[], bool],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._settings = settings
        self._material = material
        self._is_leader = is_leader
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="istiod-cert", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            self._client.close()
            return
        # The thread closes the client as it ends: never under a request it is making.
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                leader = self._is_leader()
                if leader:
                    self._check_logged()
                # A follower looks again soon, so a new leader writes within seconds.
                interval = self._settings.interval_seconds
                self._stop.wait(interval if leader else min(interval, FOLLOWER_POLL_SECONDS))
        finally:
            self._client.close()

    def _check_logged(self) -> None:
        try:
            self.check()
        except (ApiError, httpx2.HTTPError, IstiodCertSecretError) as exc:
            message = _describe(exc)
            if message != self._last_error:  # once per distinct error, until it clears
                log.warning("istiod serving certificate: %s: %s", self._settings.location, message)
            self._last_error = message
        else:
            self._last_error = ""

    def check(self) -> str | None:
        """One pass: returns why the certificate was (re)issued, or None when it was current."""
        s, now, material = self._settings, self._clock(), self._material()
        current = self._read()
        if current is not None and current.type != TLS_TYPE:
            raise IstiodCertSecretError(
                f"it has type {current.type}, not {TLS_TYPE}; delete it so Bulwark can create it"
            )
        reason = renewal_reason(current.data or {} if current else {}, material, s.dns_names, now)
        if reason is None or not self._is_leader():
            return None
        data = issue(material, s.dns_names, s.ttl, now)
        if current is None:
            secret = Secret(
                metadata=ObjectMeta(name=s.name, namespace=s.namespace, labels=dict([MANAGED_BY])),
                type=TLS_TYPE,
                data=data,
            )
            self._client.create(secret, namespace=s.namespace)
        else:
            current.data = {**(current.data or {}), **data}  # resourceVersion kept: no lost update
            self._client.replace(current)
        log.info("istiod serving certificate written to %s (%s)", s.location, reason)
        return reason

    def _read(self) -> Secret | None:
        try:
            return self._client.get(Secret, self._settings.name, namespace=self._settings.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise


class IstiodCertSecretError(Exception):
    """The Secret exists in a shape Bulwark will not overwrite."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason}: {exc.status.message}"
    return str(exc) or type(exc).__name__


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
