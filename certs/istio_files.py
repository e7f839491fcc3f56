"""The names Istio gives certificate and key files, defined here once for the CA, the agent and
the `bulwark` CLI.

Istio defines them in `security/pkg/pki/ca/ca.go` (`CACertFile`, `CAPrivateKeyFile`,
`CertChainFile`, `PrivateKeyFile`, `RootCertFile`, and for a `kubernetes.io/tls` Secret
`TLSSecretCACertFile`, `TLSSecretCAPrivateKeyFile`, `TLSSecretRootCertFile`); istio-agent
writes a workload's files under the same names (`pkg/security/security.go`). The same names
are the keys of the Secrets and ConfigMaps that carry these files (`istio-ca-secret`,
`cacerts`, `istio-ca-root-cert`, a `kubernetes.io/tls` Secret); Istio's "Plug in CA
Certificates" task shows the `cacerts` layout.
"""

from __future__ import annotations

# A workload's identity: istio-agent's OUTPUT_CERTS and PROV_CERT, `bulwark cert request --out`.
KEY = "key.pem"
CERT_CHAIN = "cert-chain.pem"  # leaf, then intermediates, then the root
ROOT_CERT = "root-cert.pem"  # the trust bundle; also the CA's published root file

# A CA's signing certificate and key: a plugged-in `cacerts` directory, `istio-ca-secret`.
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"

# The same CA as a `kubernetes.io/tls` Secret mounted as files (cert-manager's layout).
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"

# The two layouts of a plugged-in CA directory: (certificate, key, root, chain or None).
CACERTS_LAYOUTS: tuple[tuple[str, str, str, str | None], ...] = (
    (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN),
    (TLS_CERT, TLS_KEY, TLS_CA, None),
)

__all__ = [
    "CACERTS_LAYOUTS",
    "CA_CERT",
    "CA_KEY",
    "CERT_CHAIN",
    "KEY",
    "ROOT_CERT",
    "TLS_CA",
    "TLS_CERT",
    "TLS_KEY",
]
