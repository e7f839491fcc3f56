"""Istio's certificate and key file names are written in one module, `certs/istio_files.py`.

Every other string literal of the product code (ca_server, agent, certs) must take them from
there. Docstrings and comments may name the files: they document, they are not data.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from certs import istio_files

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("ca_server", "agent", "certs")
HOME = REPO / "certs" / "istio_files.py"
NAMES = (
    istio_files.KEY,
    istio_files.CERT_CHAIN,
    istio_files.ROOT_CERT,
    istio_files.CA_CERT,
    istio_files.CA_KEY,
    istio_files.TLS_CERT,
    istio_files.TLS_KEY,
    istio_files.TLS_CA,
)
# A name as a file name: not the tail of a longer one (`svid-key.pem`, `pending-key.pem`).
PATTERN = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(n) for n in NAMES) + r")(?![\w-])")
# Bulwark's own files that happen to share a name with Istio's, each with its reason.
NOT_ISTIOS = {
    ("ca_server/authn/local_issuer.py", "key.pem"): "the embedded token issuer's RSA key",
    ("agent/node/kube_api.py", "ca.crt"): "the API server's CA in a pod's service-account mount",
}


def _documentation(tree: ast.AST) -> set[int]:
    """ids of string constants that are docstrings or bare string statements."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
    return ids


def literals_naming_istio_files(path: Path) -> list[tuple[int, str]]:
    """(line, name) for each string literal in `path` (f-string parts too) that names a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    documentation = _documentation(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in documentation
        ):
            found += [(node.lineno, m.group(1)) for m in PATTERN.finditer(node.value)]
    return found


def product_modules() -> list[Path]:
    modules = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    return [p for p in modules if "_pb2" not in p.name]


def test_istio_file_names_are_literals_only_in_their_module() -> None:
    stray = []
    for path in product_modules():
        where = str(path.relative_to(REPO))
        for line, name in literals_naming_istio_files(path):
            if path != HOME and (where, name) not in NOT_ISTIOS:
                stray.append(f"{where}:{line}: {name}")
    assert stray == [], "use certs.istio_files instead:\n" + "\n".join(stray)


def test_the_scan_sees_literals_and_fstrings_but_not_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Writes root-cert.pem."""\n'
        'A = "cert-chain.pem"\n'
        'B = f"{A}/tls.crt"\n'
        'C = "svid-key.pem"\n'
        "def f():\n"
        '    """Reads key.pem."""\n'
        '    return "ca-key.pem"\n'
    )
    assert literals_naming_istio_files(sample) == [
        (2, "cert-chain.pem"),
        (3, "tls.crt"),
        (7, "ca-key.pem"),
    ]


def test_the_module_holds_every_name() -> None:
    assert {name for _, name in literals_naming_istio_files(HOME)} == set(NAMES)
