"""Issuing one certificate: the `IstioCertificateService` servicer, the signer that checks a CSR against the caller and builds the leaf, and the mapping of errors to gRPC statuses."""
