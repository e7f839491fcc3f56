"""A real CA process whose key lives in a SoftHSM2 token, and the checks the HSM suite shares:
no private key in a directory, the key's attributes read through PKCS#11 without Bulwark."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.ca_process import REPO, RunningCa, start_ca, tree_env
from tests.support.softhsm import MODULE, USER_PIN, SoftHsm

CA_LABEL = "root-2026"
PRIVATE_KEY_MARKERS = (b"PRIVATE KEY-----", b"private_key_pem")


def bulwark(hsm: SoftHsm, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `bulwark` CLI of this checkout with the token's SOFTHSM2_CONF."""
    import os

    done = subprocess.run(
        [sys.executable, "-c", "import sys; from certs.cli import main; sys.exit(main())", *args],
        cwd=REPO,
        env=tree_env({**os.environ, **hsm.env}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"bulwark {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def hsm_init(hsm: SoftHsm, label: str = CA_LABEL, key_type: str = "ec-p256") -> dict[str, Any]:
    """`bulwark ca hsm init` for `label`; the JSON it prints."""
    out = bulwark(hsm, "ca", "hsm", "init", *hsm.flags(label), "--key-type", key_type, "-o", "json")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


class TokenIssuer:
    """Service-account tokens from an issuer whose key lives outside the CA's data dir (the
    embedded issuer would put its own key there and spoil the scan for private keys)."""

    def __init__(self, directory: Path) -> None:
        from ca_server.authn.local_issuer import LOCAL_ISSUER, LocalIssuer

        self.issuer = LocalIssuer.load_or_create(directory)
        self.flags = ["--jwks-file", str(self.issuer.jwks_path), "--jwt-issuer", LOCAL_ISSUER]

    def mint(
        self, namespace: str, service_account: str, *, audience: str = "istio-ca", ttl_s: int = 3600
    ) -> str:
        return self.issuer.mint(
            namespace=namespace,
            service_account=service_account,
            audience=audience,
            ttl=timedelta(seconds=ttl_s),
        )


def start_hsm_ca(
    data_dir: Path,
    hsm: SoftHsm,
    issuer: TokenIssuer,
    *extra: str,
    label: str = CA_LABEL,
    workers: int = 2,
) -> RunningCa:
    ca = start_ca(data_dir, *hsm.flags(label), *issuer.flags, *extra, env=hsm.env, workers=workers)
    ca.mint_token = issuer.mint  # type: ignore[method-assign]
    return ca


def admin_json(ca: RunningCa, path: str, *, method: str = "GET", token: str | None = None) -> Any:
    request = urllib.request.Request(ca.admin_url + path, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def private_keys_under(root: Path) -> list[str]:
    """Files under `root` holding anything that looks like a private key (PEM blocks, the JWT
    key file's PEM field), and SQLite databases whose rows do."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(marker in data for marker in PRIVATE_KEY_MARKERS):
            found.append(str(path))
        elif data.startswith(b"SQLite format 3"):
            found.extend(f"{path}:{row}" for row in _sqlite_key_rows(path))
    return found


def _sqlite_key_rows(path: Path) -> list[str]:
    rows = []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                text = " ".join(str(v) for v in row)
                if "PRIVATE KEY" in text:
                    rows.append(f"{table} row")
    finally:
        db.close()
    return rows


def key_attributes(hsm: SoftHsm, label: str) -> dict[str, bool]:
    """The custody attributes of the private key `label`, read with python-pkcs11 directly in
    a child process (SOFTHSM2_CONF of this token; nothing of Bulwark's)."""
    script = (
        "import json, pkcs11, sys\n"
        "from pkcs11 import Attribute as A, ObjectClass\n"
        f"lib = pkcs11.lib({str(MODULE)!r})\n"
        f"with lib.get_token(token_label={hsm.label!r}).open(user_pin={USER_PIN!r}) as s:\n"
        f"    k = s.get_key(label={label!r}, object_class=ObjectClass.PRIVATE_KEY)\n"
        "    out = {n: bool(k[getattr(A, n)]) for n in ('SENSITIVE', 'EXTRACTABLE', 'PRIVATE',"
        " 'ALWAYS_SENSITIVE', 'NEVER_EXTRACTABLE', 'TOKEN', 'SIGN')}\n"
        "    try:\n"
        "        k[A.VALUE]; out['VALUE_READABLE'] = True\n"
        "    except pkcs11.exceptions.PKCS11Error:\n"
        "        out['VALUE_READABLE'] = False\n"
        "    print(json.dumps(out))\n"
    )
    done = hsm.run(sys.executable, "-c", script)
    result: dict[str, bool] = json.loads(done.stdout)
    return result
