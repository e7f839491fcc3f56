"""`python -m agent`: the same as `bulwark agent run`."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
