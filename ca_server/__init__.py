"""The Bulwark certificate authority: Istio's `IstioCertificateService` over TLS on port 15012.

It authenticates callers (client certificate, JWT/OIDC, Kubernetes TokenReview),
checks each CSR against the caller's identity, signs short-lived SPIFFE
certificates, records every one before answering, and serves metrics and an
admin API on its admin port.
"""
