"""The CA's admin HTTP API: health, metrics, the issuance record, the trust bundle, the CA's state.

`create_admin_app` (app.py) is the app on the admin port; the /v1 routes come from
`build_admin_router` (routes.py), response models from models.py.

`build_admin_router` takes narrow values (a record reader, a callable giving the
current CA certificates, the CSR policy and authenticator names, the admin
token) so the admin app can mount it without handing over the whole server.
Record routes need `Authorization: Bearer <admin token>` unless the admin port
is bound to loopback only; a missing or wrong token gets a 401 that says nothing
more. Query mistakes get 422 with a message naming the parameter; a connection to a
loopback address with another Host gets 400.
"""

from __future__ import annotations

from ca_server.admin.app import create_admin_app
from ca_server.admin.models import SpiffeBundle, SpiffeKey, spiffe_key
from ca_server.admin.routes import CaCertificates, CertificateReader, build_admin_router
from ca_server.admin.wiring import (
    admin_router_for,
    authenticator_names,
    ca_certificates_of,
    check_record,
    is_loopback,
    read_admin_token,
)

__all__ = [
    "CaCertificates",
    "CertificateReader",
    "SpiffeBundle",
    "SpiffeKey",
    "admin_router_for",
    "authenticator_names",
    "build_admin_router",
    "ca_certificates_of",
    "check_record",
    "create_admin_app",
    "is_loopback",
    "read_admin_token",
    "spiffe_key",
]
