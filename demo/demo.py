"""`make demo`: the CA on embedded defaults, end to end, in a temporary data dir.

Each step prints what it does and what it saw; any failure stops the demo
with a non-zero exit and the CA's log tail. The temporary directory is deleted at the end
unless `--keep` (`make demo ARGS=--keep`) is given: then the demo prints how to restart its
CA, so the agent command lines it printed can be copied and run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.agent_steps import AgentDemo  # noqa: E402
from tests.support.ca_client import channel, create_certificate  # noqa: E402
from tests.support.ca_process import RunningCa, start_ca, tree_env  # noqa: E402
from tests.support.openssl import key_and_csr  # noqa: E402

BULWARK = str(Path(sys.executable).parent / "bulwark")
NAMESPACE, ACCOUNT = "demo", "frontend"
SPIFFE_ID = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{ACCOUNT}"


class Demo:
    def __init__(self, work: Path, *, keep: bool = False) -> None:
        self.work = work
        self.keep = keep
        self.ca: RunningCa | None = None
        self.summary: list[str] = []
        self.started = time.monotonic()
        self.agents = AgentDemo(work, BULWARK)

    def step(self, title: str, action: Callable[[], str]) -> None:
        print(f"\n==> {title}", flush=True)
        result = action()
        self.summary.append(f"  ok  {title}: {result}")

    def sh(self, *cmd: str, show: bool = True) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.work)
        if out.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}"
            )
        if show and out.stdout.strip():
            print(out.stdout.rstrip())
        return out.stdout

    def start_ca(self) -> str:
        self.ca = start_ca(self.work / "ca-data")
        print(f"CA gRPC (TLS) on {self.ca.grpc_addr}, admin on {self.ca.admin_url}")
        print(f"root bundle: {self.ca.root_cert_path}")
        return f"serving on {self.ca.grpc_addr}"

    def mint(self) -> str:
        assert self.ca is not None
        token = self.sh(
            BULWARK,
            "token",
            "mint",
            "--data-dir",
            str(self.ca.data_dir),
            "--namespace",
            NAMESPACE,
            "--service-account",
            ACCOUNT,
            "--ttl",
            "10m",
            show=False,
        ).strip()
        (self.work / "token").write_text(token)
        print(
            f"token for system:serviceaccount:{NAMESPACE}:{ACCOUNT} written to {self.work / 'token'} (not shown)"
        )
        return "token minted by the embedded issuer"

    def openssl_csr(self) -> str:
        key_and_csr(self.work, SPIFFE_ID)
        print(f"key.pem and csr.pem created by openssl with URI SAN {SPIFFE_ID}")
        return "ECDSA P-256 key and CSR"

    def request(self) -> str:
        assert self.ca is not None
        chain = create_certificate(
            channel(self.ca.grpc_addr, self.ca.root_cert_path),
            (self.work / "csr.pem").read_bytes(),
            token=(self.work / "token").read_text(),
            ttl_s=3600,
        )
        (self.work / "cert-chain.pem").write_text("".join(chain))
        (self.work / "leaf.pem").write_text(chain[0])
        print(f"CreateCertificate returned {len(chain)} certificates (leaf, root)")
        return f"{len(chain)}-certificate chain"

    def verify(self) -> str:
        assert self.ca is not None
        for purpose in ("sslclient", "sslserver"):
            out = self.sh(
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                str(self.ca.root_cert_path),
                "leaf.pem",
                show=False,
            )
            print(f"openssl verify -x509_strict -purpose {purpose}: {out.strip()}")
        return "openssl verify -x509_strict accepts it for sslclient and sslserver"

    def inspect(self) -> str:
        assert self.ca is not None
        self.sh(BULWARK, "inspect", "cert-chain.pem", "--root", str(self.ca.root_cert_path))
        return "bulwark inspect: chain OK, X.509-SVID conforms"

    def records(self) -> str:
        assert self.ca is not None
        self.sh(BULWARK, "certs", "list", "--admin-url", self.ca.admin_url)
        self.sh(BULWARK, "certs", "verify-log", "--admin-url", self.ca.admin_url)
        return "bulwark certs list shows it; the record's hash chain verifies"

    def start_agents(self) -> str:
        assert self.ca is not None
        done = self.agents.start_agents(self.ca.data_dir, self.ca.grpc_addr, self.ca.root_cert_path)
        if self.keep:
            print(f"(the paths above are in {self.work}, which --keep keeps after the demo)")
        else:
            print(
                f"(the paths above are in {self.work}, which the demo deletes when it ends; "
                "`make demo ARGS=--keep` keeps it, to run these lines by hand)"
            )
        return done

    def kept(self) -> str:
        """How to use the kept directory: its CA is stopped with the demo."""
        assert self.ca is not None
        serve = shlex.join(
            [
                "bulwark", "ca", "serve", "--data-dir", str(self.ca.data_dir),
                "--grpc-addr", self.ca.grpc_addr, "--mtls-grpc-addr", self.ca.mtls_addr,
                "--admin-addr", self.ca.admin_addr,
            ]
        )  # fmt: skip
        mint = shlex.join(
            ["bulwark", "token", "mint", "--data-dir", str(self.ca.data_dir), "-n", NAMESPACE]
        )
        return (
            f"\nkept {self.work}. Its CA stopped with the demo; restart it with\n"
            f"  {serve}\n"
            "and the agent command lines above work again. Their tokens expire 10 minutes after "
            f"the demo minted them; mint new ones with\n  {mint} -s frontend > "
            f"{self.work / 'frontend.token'}   (and -s backend > {self.work / 'backend.token'})\n"
            f"Remove it with: rm -rf {self.work}"
        )

    def run(self) -> int:
        try:
            self.step("start the CA on embedded defaults", self.start_ca)
            self.step("mint a service-account token", self.mint)
            self.step("make a key and CSR with openssl", self.openssl_csr)
            self.step("request a certificate over gRPC/TLS", self.request)
            self.step("verify it with openssl", self.verify)
            self.step("inspect it with bulwark", self.inspect)
            self.step("list the issuance record", self.records)
            self.step("start agents for sa/frontend and sa/backend", self.start_agents)
            self.step("mTLS: backend SVID via Workload API, frontend via SDS", self.agents.mtls)
            self.step("short-TTL rotation pushed over SDS", self.agents.rotation)
            self.step("bulwark agent status", self.agents.status)
            self.step("stop the agents with SIGTERM", self.agents.stop)
        except Exception as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            if self.ca is not None:
                print("--- CA log (tail) ---\n" + self.ca.log()[-3000:], file=sys.stderr)
            print(self.agents.logs(), file=sys.stderr)
            return 1
        finally:
            self.agents.cleanup()
            if self.ca is not None:
                self.ca.stop()
        print(f"\n==> summary ({time.monotonic() - self.started:.1f}s)")
        print("\n".join(self.summary))
        print(self.kept() if self.keep else f"\nremoved {self.work} (--keep keeps it)")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bulwark's end-to-end demo (`make demo`).")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (CA data, tokens, agent sockets and logs)",
    )
    args = parser.parse_args(argv)
    os.environ.update(tree_env(os.environ))  # every `bulwark` and agent below runs this tree
    if args.keep:
        return Demo(Path(tempfile.mkdtemp(prefix="bulwark-demo-")), keep=True).run()
    with tempfile.TemporaryDirectory(prefix="bulwark-demo-") as work:
        return Demo(Path(work)).run()


if __name__ == "__main__":
    sys.exit(main())
