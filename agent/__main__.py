"""`python -m agent`: the same as `bulwark agent run`.

The agent's only TLS is grpc's own (BoringSSL inside grpcio); it never uses
Python's OpenSSL bindings. asyncio and hashlib import them anyway (`ssl`,
`_hashlib`), which maps the system libssl and libcrypto: 4.5 MB of the agent's
resident memory. Marked missing before anything imports them, the process runs
as on a Python built without OpenSSL, which both support: asyncio without
`ssl=` connections (unused), hashlib and hmac on their built-in implementations.
"""

from __future__ import annotations

import sys

for _name in ("ssl", "_hashlib"):
    if _name not in sys.modules:
        sys.modules[_name] = None  # type: ignore[assignment]

from agent.cli.commands import main  # noqa: E402

sys.exit(main())
