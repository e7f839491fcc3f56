"""`bulwark ca intermediate`: run Bulwark as an intermediate CA under an offline root.

    bulwark ca intermediate csr --key-dir DIR [--trust-domain TD] [--cluster-id ID] [--out FILE]
        a new key (DIR/pending-key.pem, 0600) and a CSR for the offline root to sign
    bulwark ca intermediate install --key-dir DIR --cert SIGNED.pem --root ROOT.pem
                                    --cacerts-dir CACERTS [--chain MORE.pem]
        check the signed certificate (matches the pending key, is a CA, chains to the root)
        and write a complete plugged-in set into CACERTS, the directory `ca serve
        --cacerts-dir` reads. With `--ca-rotation new-key` the CA takes the new set as its
        *prepared* CA and activates it after the propagation delay.

With `--ca-key pkcs11:... --pkcs11-module M --pkcs11-pin-file F` instead of `--key-dir`, the
key is one in an HSM (made by `bulwark ca hsm init`): the HSM signs the CSR, and `install`
writes `ca-key.uri` (the key's URI) where a key file would go (docs/HSM.md).

Exit 0 done, 2 on any refusal (one line naming the file and the problem).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_server.authority.custody import (
    FILE_CUSTODY,
    HsmCustody,
    KeyCustody,
    certificate_key,
)
from ca_server.authority.material import KEY_STEM, load_cacerts_dir
from ca_server.errors import ConfigError
from ca_server.options import CA_OPTIONS
from certs import istio_files
from certs.cli.exits import EXIT_OK, fail
from certs.errors import CertsError
from certs.files import write_atomic
from certs.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    load_private_key,
    private_key_pem,
    signature_hash,
    spki_der,
)
from certs.pem import bundle_pem, load_certificates, to_pem

PENDING_KEY = "pending-key.pem"


def make_csr(
    key_dir: Path | None,
    trust_domain: str,
    key: PrivateKey | None = None,
    *,
    cluster_id: str = "",
) -> bytes:
    """A CA CSR (O = trust domain) for `key` (an HSM key), or for a new P-256 key kept in
    `key_dir`; with `cluster_id` (multi-primary: one intermediate per cluster) the CN names
    the cluster."""
    common_name = f"Bulwark intermediate CA {trust_domain}"
    if cluster_id:
        common_name += f" {cluster_id}"
    if len(common_name) > 64:  # X.520's upper bound for a CN
        raise ConfigError(f"--cluster-id {cluster_id!r} makes the CN longer than 64 characters")
    if key is None:
        if key_dir is None:
            raise ConfigError("give --key-dir (a new key file) or --ca-key (a key in an HSM)")
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pending: PrivateKey | None = generate_key(KeyType.EC_P256)
    else:
        pending = None
    signer = key or pending
    assert signer is not None
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(signer, signature_hash(signer))
    )
    if pending is not None and key_dir is not None:
        write_atomic(key_dir / PENDING_KEY, private_key_pem(pending), mode=0o600)
    return csr.public_bytes(Encoding.PEM)


def install(
    key_dir: Path | None,
    cert_path: Path,
    root_path: Path,
    cacerts: Path,
    chain_path: Path | None,
    custody: KeyCustody = FILE_CUSTODY,
) -> str:
    """Write the signed intermediate, its pending key (or, with an HSM custody, the URI of the
    key `--ca-key` names), the chain and the root into `cacerts`; returns the new
    certificate's subject. Refuses (ConfigError) anything inconsistent."""
    try:
        cert = load_certificates(cert_path.read_bytes(), what=str(cert_path))[0]
        roots = load_certificates(root_path.read_bytes(), what=str(root_path))
        more = load_certificates(chain_path.read_bytes()) if chain_path else []
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} does not exist") from None
    except (CertsError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    key = _installed_key(key_dir, cert, cert_path, custody)
    stored = custody.encode(key)
    key_name = f"{KEY_STEM}{stored.suffix}"
    staging = cacerts.parent / f".{cacerts.name}.staging"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(staging / key_name, stored.data, mode=stored.mode)
    write_atomic(staging / istio_files.CA_CERT, to_pem(cert).encode())
    write_atomic(staging / istio_files.CERT_CHAIN, bundle_pem([cert, *more]).encode())
    write_atomic(staging / istio_files.ROOT_CERT, bundle_pem(roots).encode())
    load_cacerts_dir(staging, datetime.now(UTC), custody)  # the CA's checks, before it sees them
    cacerts.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Root and chain first: until the key and certificate follow, the CA sees a mismatch and
    # keeps what it has; the key before the certificate for the same reason.
    for name in (istio_files.ROOT_CERT, istio_files.CERT_CHAIN, key_name, istio_files.CA_CERT):
        mode = stored.mode if name == key_name else 0o644
        write_atomic(cacerts / name, (staging / name).read_bytes(), mode=mode)
        (staging / name).unlink()
    staging.rmdir()
    if key_dir is not None and (key_dir / PENDING_KEY).exists():
        (key_dir / PENDING_KEY).unlink()
    return cert.subject.rfc4514_string()


def _installed_key(
    key_dir: Path | None, cert: x509.Certificate, cert_path: Path, custody: KeyCustody
) -> PrivateKey:
    """The key the signed certificate must be for: the pending key file, or the HSM key."""
    if isinstance(custody, HsmCustody):
        uri = custody.configured
        return custody.key(uri, certificate_key(cert), where=f"{cert_path} (for {uri})")
    if key_dir is None:
        raise ConfigError("give --key-dir (the one given to csr) or --ca-key (a key in an HSM)")
    try:
        key = load_private_key((key_dir / PENDING_KEY).read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} does not exist") from None
    except (CertsError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if spki_der(key.public_key()) != spki_der(certificate_key(cert)):
        raise ConfigError(f"{cert_path} was not issued for the key of {key_dir / PENDING_KEY}")
    return key


def _run(args: argparse.Namespace) -> int:
    custody: KeyCustody = FILE_CUSTODY
    key_dir = Path(args.key_dir) if args.key_dir else None
    try:
        custody = _custody(args)
        if args.intermediate_command == "csr":
            hsm_key = custody.initial_key() if isinstance(custody, HsmCustody) else None
            pem = make_csr(key_dir, args.trust_domain, hsm_key, cluster_id=args.cluster_id)
            if args.out:
                write_atomic(Path(args.out), pem)
            else:
                sys.stdout.write(pem.decode())
            return EXIT_OK
        subject = install(
            key_dir,
            Path(args.cert),
            Path(args.root),
            Path(args.cacerts_dir),
            Path(args.chain) if args.chain else None,
            custody,
        )
    except (ConfigError, OSError) as exc:
        return fail(f"ca intermediate {args.intermediate_command}", exc)
    finally:
        if isinstance(custody, HsmCustody):
            custody.token.close()
    print(f"installed {subject} into {args.cacerts_dir}")
    return EXIT_OK


def _custody(args: argparse.Namespace) -> KeyCustody:
    """File keys, or the HSM key `--ca-key` names (opened and checked now)."""
    from ca_server.cli.hsm import settings_from_args

    settings = settings_from_args(args)
    if settings is None:
        return FILE_CUSTODY
    if args.key_dir:
        raise ConfigError("give --key-dir (a key file) or --ca-key (a key in an HSM), not both")
    token = settings.token()
    token.open()
    return HsmCustody(token, settings.key)


def register_intermediate(ca_sub: Any) -> None:
    """Add `intermediate csr|install` under `bulwark ca`."""
    top = ca_sub.add_parser(
        "intermediate",
        help="run under an offline root: make a CSR, install the signed intermediate",
        description=(
            "Make a key and CSR for an offline root to sign, then install the signed "
            "intermediate into the plugged-in CA directory the CA serves."
        ),
    )
    sub = top.add_subparsers(dest="intermediate_command", metavar="ACTION", required=True)
    csr = sub.add_parser(
        "csr",
        help="new key and CSR",
        description="Make a new intermediate key (0600) and print its CSR.",
    )
    csr.add_argument("--key-dir", help="where the pending key is kept (0700)")
    csr.add_argument(
        "--trust-domain", default=CA_OPTIONS["trust_domain"].default, help="O of the CSR subject"
    )
    csr.add_argument(
        "--cluster-id",
        default="",
        help="name the cluster in the CN (multi-primary: one intermediate per cluster)",
    )
    csr.add_argument("--out", help="write the CSR here instead of stdout")
    inst = sub.add_parser(
        "install",
        help="install the signed intermediate",
        description="Check the signed intermediate and write it, with its key, the chain "
        "and the root, into --cacerts-dir.",
    )
    inst.add_argument("--key-dir", help="the --key-dir given to csr")
    inst.add_argument("--cert", required=True, help="the intermediate the offline root signed")
    inst.add_argument("--root", required=True, help="the offline root (the trust bundle)")
    inst.add_argument("--chain", help="certificates between the intermediate and the root")
    inst.add_argument("--cacerts-dir", required=True, help="the CA's --cacerts-dir")
    from ca_server.cli.hsm import KEY_OPTIONS

    for p in (csr, inst):
        for option in KEY_OPTIONS:
            option.add_to(p, help=f"{option.help} (instead of --key-dir)")
        p.set_defaults(handler=_run)


__all__ = ["install", "make_csr", "register_intermediate"]
