"""`python -m agent`: the same as `bulwark agent run`.

The agent's only TLS is grpc's own (BoringSSL inside grpcio); it never uses
Python's OpenSSL bindings. asyncio and hashlib import them anyway (`ssl`,
`_hashlib`), which maps the system libssl and libcrypto: 4.5 MB of the agent's
resident memory. Marked missing before anything imports them, the process runs
as on a Python built without OpenSSL, which both support: asyncio without
`ssl=` connections (unused), hashlib and hmac on their built-in implementations.
"""

from __future__ import annotations

import itertools
import sys

_ARGS = sys.argv[1:]
# A node agent with the k8s attestor talks HTTPS to the API server with Python's ssl: node
# mode (a flag only, so that it can be seen here) keeps the OpenSSL bindings.
_NODE = "--mode=node" in _ARGS or any(
    a == "--mode" and b == "node" for a, b in itertools.pairwise(_ARGS)
)
for _name in () if _NODE else ("ssl", "_hashlib"):
    if _name not in sys.modules:
        sys.modules[_name] = None  # type: ignore[assignment]

from agent.cli.commands import main  # noqa: E402

sys.exit(main())
