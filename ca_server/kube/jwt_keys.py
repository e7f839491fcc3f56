"""The JWT-SVID key set replicas share through a Kubernetes Secret (issue 22.5).

The Secret `bulwark-jwt-keys` of the CA's namespace holds the key set as one document
(`keys.json`, private keys included, so it is as secret as `istio-ca-secret`). A write
carries the resourceVersion it read, so the API server lets one of two concurrent writers
win (compare-and-set); the leader writes, the followers read. Created on first use.
"""

from __future__ import annotations

import base64
import binascii

import httpx2
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from ca_server.kube.errors import KubeApiError, KubeMaterialError

JWT_KEYS_SECRET = "bulwark-jwt-keys"
DOCUMENT_KEY = "keys.json"


class JwtKeySecret:
    """`KeySetStore` (`ca_server.spiffe.jwtsvid.shared`) on a Secret; raises `KubeError`s."""

    def __init__(self, client: Client, *, namespace: str, name: str = JWT_KEYS_SECRET) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name

    @property
    def location(self) -> str:
        return f"secret {self._namespace}/{self._name}"

    def load(self) -> tuple[str, bytes | None]:
        try:
            secret = self._client.get(Secret, self._name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return "", None
            raise KubeApiError(f"reading {self.location}: {_status(exc)}") from exc
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"reading {self.location}: {type(exc).__name__}") from exc
        version = str(secret.metadata.resourceVersion or "") if secret.metadata else ""
        encoded = (secret.data or {}).get(DOCUMENT_KEY)
        if not encoded:
            return version, None
        try:
            return version, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KubeMaterialError(f"{self.location} holds data that is not base64") from exc

    def compare_and_set(self, version: str, document: bytes) -> bool:
        secret = Secret(
            metadata=ObjectMeta(
                name=self._name, namespace=self._namespace, resourceVersion=version or None
            ),
            type="Opaque",
            data={DOCUMENT_KEY: base64.b64encode(document).decode("ascii")},
        )
        try:
            if version:
                self._client.replace(secret)
            else:
                self._client.create(secret, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code == 409:  # another replica wrote (or created) it first
                return False
            raise KubeApiError(f"writing {self.location}: {_status(exc)}") from exc
        except httpx2.HTTPError as exc:
            raise KubeApiError(f"writing {self.location}: {type(exc).__name__}") from exc
        return True


def _status(exc: ApiError) -> str:
    return f"{exc.status.code} {exc.status.reason}"


__all__ = ["DOCUMENT_KEY", "JWT_KEYS_SECRET", "JwtKeySecret"]
