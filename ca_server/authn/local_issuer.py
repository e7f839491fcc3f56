"""An embedded token issuer for machines without Kubernetes.

It keeps an RSA key and a JWKS in `<data-dir>/token-issuer/` and mints tokens
shaped like Kubernetes projected service-account tokens, so the JWT
authenticator can verify them exactly as it verifies a cluster's.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ca_server.options import ISTIO_CA_AUDIENCE
from certs.files import write_atomic
from certs.keys import KeyType, generate_key, load_private_key, private_key_pem

LOCAL_ISSUER = "https://bulwark.local/token-issuer"
ISSUER_DIR = "token-issuer"  # under the data dir
# The issuer's own RSA key (0600) and its public JWKS: Bulwark's files, not Istio's.
KEY_FILE = "key.pem"
JWKS_FILE = "jwks.json"
# In the data dir: which tokens the CA that last started there accepts, so that
# `bulwark token mint` can warn before it prints a token that CA would refuse.
TOKEN_POLICY_FILE = "token-policy.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenPolicy:
    """What a CA accepts of a token, as `bulwark token mint` needs to know it."""

    embedded_issuer: bool  # the CA trusts this data dir's embedded issuer
    max_token_lifetime_s: float
    audiences: tuple[str, ...]


def write_token_policy(data_dir: Path, policy: TokenPolicy) -> None:
    """Record `policy` in the data dir (public facts: 0644), replacing the previous one."""
    body = json.dumps({**asdict(policy), "audiences": list(policy.audiences)}, indent=2)
    write_atomic(data_dir / TOKEN_POLICY_FILE, body.encode() + b"\n", mode=0o644)


def read_token_policy(data_dir: Path) -> TokenPolicy | None:
    """The policy the data dir's CA recorded at its last start; None when there is none (or
    it cannot be read: a hint is not worth an error)."""
    try:
        data = json.loads((data_dir / TOKEN_POLICY_FILE).read_text())
        return TokenPolicy(
            embedded_issuer=bool(data["embedded_issuer"]),
            max_token_lifetime_s=float(data["max_token_lifetime_s"]),
            audiences=tuple(str(a) for a in data["audiences"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalIssuer:
    """Mints RS256 service-account tokens; its JWKS is what the CA trusts by default."""

    def __init__(self, key: rsa.RSAPrivateKey, kid: str, directory: Path) -> None:
        self._key = key
        self.kid = kid
        self.directory = directory

    @property
    def jwks_path(self) -> Path:
        return self.directory / JWKS_FILE

    @classmethod
    def load_or_create(cls, data_dir: Path) -> LocalIssuer:
        directory = data_dir / ISSUER_DIR
        key_path = directory / KEY_FILE
        if key_path.exists():
            key = load_private_key(key_path.read_bytes())
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{key_path} must hold an RSA key")
        else:
            created = [d for d in (data_dir, directory) if not d.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            for made in created:  # owner-only whatever the umask: it holds the issuer's key
                os.chmod(made, 0o700)
            new_key = generate_key(KeyType.RSA_2048)
            assert isinstance(new_key, rsa.RSAPrivateKey)
            key = new_key
            write_atomic(key_path, private_key_pem(key), mode=0o600)
        kid = _kid(key)
        issuer = cls(key, kid, directory)
        jwks = json.dumps(issuer.jwks(), indent=2).encode()
        if not issuer.jwks_path.exists() or issuer.jwks_path.read_bytes() != jwks:
            write_atomic(issuer.jwks_path, jwks, mode=0o644)
        return issuer

    def jwks(self) -> dict[str, object]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def mint(
        self,
        *,
        namespace: str,
        service_account: str,
        audience: str | list[str] = ISTIO_CA_AUDIENCE,
        ttl: timedelta = timedelta(hours=1),
        pod_name: str = "",
        now: float | None = None,
    ) -> str:
        """A signed token for `system:serviceaccount:<namespace>:<service_account>`."""
        issued = int(time.time() if now is None else now)
        audiences = [audience] if isinstance(audience, str) else list(audience)
        k8s: dict[str, object] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
        }
        if pod_name:
            k8s["pod"] = {"name": pod_name, "uid": str(uuid.uuid4())}
        claims = {
            "iss": LOCAL_ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": audiences,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl.total_seconds()),
            "jti": str(uuid.uuid4()),
            "kubernetes.io": k8s,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})


def _kid(key: rsa.RSAPrivateKey) -> str:
    from certs.keys import spki_sha256

    return spki_sha256(key.public_key())[:16]
