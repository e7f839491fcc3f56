"""The Envoy bootstrap shown in docs/AGENT.md is one the real Envoy accepts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.envoy import TLS_SOCKET, TYPES, envoy_binary

DOC = Path(__file__).resolve().parents[2] / "docs" / "AGENT.md"


def test_the_documented_bootstrap_validates(tmp_path: Path) -> None:
    section = DOC.read_text().split("## Wiring Envoy to the agent by hand", 1)[1]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert snippet, "no yaml block in the Envoy section of docs/AGENT.md"
    doc = yaml.safe_load(snippet.group(1))
    # The documented TLS context, used by a cluster calling a peer.
    doc["static_resources"]["clusters"].append(
        {
            "name": "peer",
            "type": "STATIC",
            "load_assignment": {"cluster_name": "peer", "endpoints": []},
            "transport_socket": {
                "name": TLS_SOCKET,
                "typed_config": {
                    "@type": f"{TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": doc.pop("common_tls_context"),
                },
            },
        }
    )
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(doc))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr
