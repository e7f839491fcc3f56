"""`GET /v1/ca` of a running CA's admin API, for `bulwark inspect --ca` (stdlib HTTP only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 10.0


def fetch_ca(admin_url: str) -> dict[str, Any]:
    """The CA's `/v1/ca` document; ValueError saying why it could not be had."""
    base = admin_url if "://" in admin_url else f"http://{admin_url}"
    url = base.rstrip("/") + "/v1/ca"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            doc = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"the admin API at {base} answered {exc.code} for /v1/ca") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"cannot reach the admin API at {base}: {reason}") from None
    except json.JSONDecodeError:
        raise ValueError(f"the admin API at {base} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the admin API at {base} answered something other than /v1/ca")
    return doc


__all__ = ["fetch_ca"]
