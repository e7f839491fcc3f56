"""`python -m ca_server [flags]` is `bulwark ca serve [flags]` (the container entry point)."""

from __future__ import annotations

import sys

from certs.cli import main

if __name__ == "__main__":
    sys.exit(main(["ca", "serve", *sys.argv[1:]]))
