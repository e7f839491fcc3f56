"""The shared PKI core and the `bulwark` command line.

SPIFFE IDs and trust domains (`spiffe_id`), keys (`keys`), CSRs (`csr`), the
certificate profiles of the CA and its leaves (`profile`), PEM helpers (`pem`)
and chain plus X.509-SVID checks (`verify`). The CA server and the agent both
build on these; nothing here does I/O beyond parsing bytes.

Callers import the module they need (`from certs.csr import parse_csr`): this file
re-exports nothing, so a process loads only what it uses (the agent never loads the CA's
certificate profiles).
"""
