"""Self-signed CA material in the Secret `istio-ca-secret` (docs/COMPATIBILITY.md §1 "CA key material").

Also a `SlotStore` (`ca_server.authority.slots.store`): the CA slots of `--ca-rotation new-key` live
in extra `bulwark-` keys of the same Secret, so every replica follows the leader's
transitions and a restarted leader resumes mid-rotation.

A `RenewableKeyStore` (see `ca_server.authority.material`, `ca_server.authority.refresh`): `load()` reads the
Secret, `save()` creates it only when absent, `replace()` stores a renewed root. Replicas starting together race on the create; the API server lets exactly one
win and every loser reads the winner back, so all replicas end up on one root.

With an HSM key (`HsmCustody`) the Secret holds certificates only: `ca-key.pem` stays empty
and `ca-key.uri` names the key in the token (a name, not key material).
"""

from __future__ import annotations

import base64
import binascii

import httpx2
from cryptography import x509
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.authority.custody import (
    FILE_CUSTODY,
    PEM_SUFFIX,
    URI_SUFFIX,
    KeyCustody,
    certificate_key,
)
from ca_server.authority.material import KEY_STEM, CaMaterial
from ca_server.authority.slots.model import SlotState
from ca_server.authority.slots.store import PREFIX, STATE_NAME, decode_state, encode_state
from ca_server.errors import ConfigError
from ca_server.hsm.errors import HsmError
from ca_server.kube.errors import KubeApiError, KubeMaterialError
from ca_server.kube.settings import CA_SECRET_NAME
from certs import istio_files
from certs.errors import CertsError
from certs.pem import load_certificates, to_pem

CA_SECRET_TYPE = "istio.io/ca-root"
CA_KEY_URI = f"{KEY_STEM}{URI_SUFFIX}"  # HSM custody: the key's PKCS#11 URI, not ca-key.pem
SLOTS_PREFIX = "bulwark-"  # extra keys holding the CA slots (ca_server.authority.slots.store)


class SecretKeyStore:
    """CA material in one Secret of the CA's namespace; the key never leaves it unencrypted
    except over the API server's TLS."""

    def __init__(
        self,
        client: Client,
        *,
        namespace: str,
        name: str = CA_SECRET_NAME,
        mirror: bool = True,
        custody: KeyCustody = FILE_CUSTODY,
    ) -> None:
        self._custody = custody
        self._mirror = mirror  # False: a Secret holding only the slots of a plugged-in CA
        self._client = client
        self._namespace = namespace
        self._name = name

    @property
    def location(self) -> str:
        return f"secret {self._namespace}/{self._name}"

    def load(self) -> CaMaterial | None:
        data = self._read()
        return None if data is None else self._parse(data)

    def _read(self) -> dict[str, str] | None:
        """The Secret's data, or None when there is no Secret."""
        try:
            secret = self._client.get(Secret, self._name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise KubeApiError(f"reading {self.location}: {_status(exc)}") from exc
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"reading {self.location}: {type(exc).__name__}") from exc
        return dict(secret.data or {})

    def save(self, material: CaMaterial) -> CaMaterial:
        """Create the Secret unless it exists; return whatever the Secret holds afterwards."""
        secret = Secret(
            metadata=ObjectMeta(name=self._name, namespace=self._namespace),
            type=CA_SECRET_TYPE,
            data={
                **_secret_data(material, self._custody),
                istio_files.CERT_CHAIN: "",
                istio_files.KEY: "",
            },
        )
        try:
            self._client.create(secret, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 409:
                raise KubeApiError(f"creating {self.location}: {_status(exc)}") from exc
            # Another replica created it first: its root is the root.
            winner = self.load()
            if winner is None:
                raise KubeApiError(f"{self.location} conflicted on create, then vanished") from exc
            return winner
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"creating {self.location}: {type(exc).__name__}") from exc
        return material

    def replace(self, material: CaMaterial) -> None:
        """Overwrite the stored material after a root renewal (the leader only). The update
        carries the resourceVersion read just before, so a concurrent writer makes it fail
        rather than be silently overwritten."""
        try:
            secret = self._client.get(Secret, self._name, namespace=self._namespace)
            secret.data = {**(secret.data or {}), **_secret_data(material, self._custody)}
            self._client.replace(secret)
        except ApiError as exc:
            raise KubeApiError(f"updating {self.location}: {_status(exc)}") from exc
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"updating {self.location}: {type(exc).__name__}") from exc

    def load_state(self) -> SlotState | None:
        """The CA slots (`--ca-rotation new-key`) from the Secret's `bulwark-` keys, if any."""
        data = self._read()
        if data is None:
            return None
        record = data.get(SLOTS_PREFIX + STATE_NAME)
        if not record:
            return None
        try:
            blobs = {
                k[len(SLOTS_PREFIX) :]: _unb64(v)
                for k, v in data.items()
                if k.startswith(SLOTS_PREFIX + PREFIX)
            }
            raw = _unb64(record)
        except (binascii.Error, ValueError) as exc:
            raise KubeMaterialError(f"{self.location} holds data that is not base64") from exc
        try:
            return decode_state(raw, blobs, self.location, self._custody)
        except ConfigError as exc:
            raise KubeMaterialError(str(exc)) from exc

    def save_state(self, state: SlotState) -> None:
        """Store the slots (and, for the self-signed CA's Secret, mirror the active CA into the
        classic keys) in one write; the resourceVersion makes a concurrent writer fail, not
        overwrite. A slots-only Secret (`mirror=False`) is created on first use."""
        blobs, record = encode_state(state, self._custody)
        slots = {SLOTS_PREFIX + k: _b64(v) for k, v in blobs.items()}
        slots[SLOTS_PREFIX + STATE_NAME] = _b64(record)
        try:
            try:
                secret = self._client.get(Secret, self._name, namespace=self._namespace)
            except ApiError as exc:
                if exc.status.code != 404 or self._mirror:
                    raise
                meta = ObjectMeta(name=self._name, namespace=self._namespace)
                self._client.create(
                    Secret(metadata=meta, type="Opaque", data=slots), namespace=self._namespace
                )
                return
            kept = {k: v for k, v in (secret.data or {}).items() if not k.startswith(SLOTS_PREFIX)}
            mirror = (
                _secret_data(state.material("self-signed"), self._custody) if self._mirror else {}
            )
            secret.data = {**kept, **mirror, **slots}
            self._client.replace(secret)
        except ApiError as exc:
            raise KubeApiError(f"updating {self.location}: {_status(exc)}") from exc
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"updating {self.location}: {type(exc).__name__}") from exc

    def _parse(self, data: dict[str, str]) -> CaMaterial:
        try:
            cert_pem = _unb64(data.get(istio_files.CA_CERT, ""))
            key_blobs = {
                name: raw
                for name in (istio_files.CA_KEY, CA_KEY_URI)
                if (raw := _unb64(data.get(name, "")))
            }
            root_pem = _unb64(data.get(istio_files.ROOT_CERT, "")) or cert_pem
        except (binascii.Error, ValueError) as exc:
            raise KubeMaterialError(f"{self.location} holds data that is not base64") from exc
        if not cert_pem or (not key_blobs and self._custody.kind == "file"):
            raise KubeMaterialError(
                f"{self.location} lacks {istio_files.CA_CERT} or {istio_files.CA_KEY}; delete it or fill it in"
            )
        try:
            cert = load_certificates(cert_pem, what=f"{self.location} {istio_files.CA_CERT}")[0]
            roots = tuple(
                load_certificates(root_pem, what=f"{self.location} {istio_files.ROOT_CERT}")
            )
        except (CertsError, ValueError, TypeError) as exc:
            raise KubeMaterialError(f"{self.location} holds unreadable PEM ({exc})") from exc
        try:
            key = self._custody.decode(key_blobs, KEY_STEM, certificate_key(cert), self.location)
        except HsmError:
            raise
        except ConfigError as exc:
            raise KubeMaterialError(str(exc)) from exc
        chain: tuple[x509.Certificate, ...] = () if cert in roots else (cert,)
        return CaMaterial(
            signing_cert=cert, signing_key=key, chain=chain, roots=roots, source="self-signed"
        )


def _secret_data(material: CaMaterial, custody: KeyCustody) -> dict[str, str]:
    """The classic keys; with an HSM `ca-key.pem` is empty and `ca-key.uri` names the key."""
    stored = custody.encode(material.signing_key)
    is_pem = stored.suffix == PEM_SUFFIX
    data = {
        istio_files.CA_CERT: _b64(to_pem(material.signing_cert).encode()),
        istio_files.CA_KEY: _b64(stored.data) if is_pem else "",
        istio_files.ROOT_CERT: _b64(material.root_bundle_pem.encode()),
    }
    if not is_pem:
        data[CA_KEY_URI] = _b64(stored.data)
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _status(exc: ApiError) -> str:
    return f"{exc.status.code} {exc.status.reason}"


__all__ = ["CA_SECRET_NAME", "CA_SECRET_TYPE", "SecretKeyStore"]
