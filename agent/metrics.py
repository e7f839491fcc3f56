"""The agent's Prometheus series (docs/COMPATIBILITY.md §2, prefix `istio_agent_`), in a few dozen lines.

A hand-written registry instead of `prometheus_client`: the agent exposes a
handful of series and every megabyte of resident memory counts per pod
(`prometheus_client` adds 1.3 MB, measured).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from certs.spiffe_bundle import REFUSAL_REASONS

Labels = tuple[tuple[str, str], ...]
# The agent takes the CA's documents without ordering them by spiffe_sequence.
TRUST_BUNDLE_REFUSALS = tuple(r for r in REFUSAL_REASONS if r != "sequence_regressed")


@dataclass(slots=True)
class _Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    values: dict[Labels, float] = field(default_factory=dict)


class AgentMetrics:
    """Counters and gauges of one agent; `render` gives the text exposition format."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[Callable[[AgentMetrics], None]] = []
        for name, kind, text in _SERIES:
            self._families[name] = _Family(name, kind, text)
        for request_type in ("csr",):
            for name in (
                "outgoing_latency",
                "num_outgoing_requests",
                "num_failed_outgoing_requests",
                "num_outgoing_retries",
            ):
                self._families[name].values[(("request_type", request_type),)] = 0.0
        for reason in TRUST_BUNDLE_REFUSALS:
            self._families["trust_bundle_refusals_total"].values[(("reason", reason),)] = 0.0
        for name in (
            "num_file_watcher_failures_total",
            "num_file_secret_failures_total",
            "sds_nack_count",
            "ca_root_failures_total",
            "ca_reachable",
        ):
            self._families[name].values[()] = 0.0

    def register(self, name: str, kind: str, text: str) -> None:
        """A further series (node mode's own); a no-op if it exists."""
        self._families.setdefault(name, _Family(name, kind, text))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        values = self._families[name].values
        key = tuple(sorted(labels.items()))
        values[key] = values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._families[name].values[tuple(sorted(labels.items()))] = value

    def clear(self, name: str) -> None:
        self._families[name].values.clear()

    def value(self, name: str, **labels: str) -> float:
        return self._families[name].values.get(tuple(sorted(labels.items())), 0.0)

    def add_collector(self, collect: Callable[[AgentMetrics], None]) -> None:
        """`collect` refreshes gauges (such as time to expiry) just before each scrape."""
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in self._collectors:
            collect(self)
        lines: list[str] = []
        for family in self._families.values():
            full = f"istio_agent_{family.name}"
            lines.append(f"# HELP {full} {family.help}")
            lines.append(f"# TYPE {full} {family.kind}")
            for labels, value in sorted(family.values.items()):
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{full}{{{rendered}}} {value:g}" if labels else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_SERIES = (
    (
        "outgoing_latency",
        "counter",
        "The latency of outgoing requests (e.g. to the CA) in milliseconds, summed.",
    ),
    ("num_outgoing_requests", "counter", "Number of total outgoing requests (e.g. to the CA)."),
    ("num_failed_outgoing_requests", "counter", "Number of failed outgoing requests."),
    ("num_outgoing_retries", "counter", "Number of outgoing retry requests (e.g. to the CA)."),
    (
        "cert_expiry_seconds",
        "gauge",
        "The time remaining, in seconds, before a certificate expires.",
    ),
    (
        "num_file_watcher_failures_total",
        "counter",
        "Number of times a watched file failed to load.",
    ),
    (
        "num_file_secret_failures_total",
        "counter",
        "Number of times a file-cert/file-root secret could not be served.",
    ),
    ("sds_nack_count", "counter", "Number of SDS responses Envoy rejected (NACK)."),
    ("sds_push_count", "counter", "Number of SDS/Workload API updates sent, by resource."),
    (
        "cert_expiry_timestamp_seconds",
        "gauge",
        "When a served certificate expires, in seconds since the Unix epoch.",
    ),
    (
        "last_rotation_timestamp_seconds",
        "gauge",
        "When the agent last obtained a certificate from the CA, in seconds since the epoch.",
    ),
    (
        "ca_reachable",
        "gauge",
        "1 if the CA answered the last CSR (even with a refusal), 0 if it could not be reached.",
    ),
    (
        "trust_bundle_refusals_total",
        "counter",
        "Number of trust bundle documents from the CA refused (the domain's last good one kept).",
    ),
    (
        "ca_root_failures_total",
        "counter",
        "Number of times the CA root file was unusable and the last good root was kept.",
    ),
)
