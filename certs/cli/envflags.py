"""Flags that fall back to environment variables, and say so in `--help`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from certs.values import parse_bool


def env_flag(
    parser: argparse.ArgumentParser | Any,
    flag: str,
    env: str,
    *,
    default: Any = None,
    help: str,
    **kwargs: Any,
) -> None:
    """Add `flag` whose default comes from `$env`, then `default`; help shows both."""
    value = os.environ.get(env, default)
    shown = f" (env {env}; default: {default})" if default not in (None, "") else f" (env {env})"
    parser.add_argument(flag, default=value, help=help + shown, **kwargs)


def env_bool(env: str, default: bool = False) -> bool:
    """`$env` as a boolean (Go's `strconv.ParseBool` words); unset or empty means `default`."""
    raw = os.environ.get(env)
    if not raw:
        return default
    return parse_bool(raw, env)
