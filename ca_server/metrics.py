"""Prometheus series of docs/COMPATIBILITY.md §1 (`citadel_server_*`), shared across worker processes.

Istio's series keep their names and meaning. Bulwark adds
`bulwark_ca_refusals_total{reason,code,cluster}`: every call the CA refuses, whatever
the status, with a bounded `reason` (`REFUSAL_REASONS`: the reasons the classes of
`ca_server.errors` carry), so that refusals no `citadel_server_*` series counts
(PERMISSION_DENIED, overload) are seen too; every (reason, code) pair an error class carries
is exported at 0 from the start (for the CA's own cluster), so a rate or an alert has a series
before the first refusal; `bulwark_ca_issued_total{cluster}`, the certificates issued by the
cluster the request named (`clusterid`; none is the CA's own);
`bulwark_ca_jwt_svids_issued_total`, the JWT-SVIDs minted (the `citadel_server_*` issuance
count is Istio's, for certificates only). `cluster` is bounded: the CA's own cluster ID, a
remote (or alias) cluster it knows from a remote secret, or `unknown` for anything else;
and two histograms, `bulwark_ca_issue_duration_seconds` (every call) and
`bulwark_ca_record_commit_duration_seconds` (every record batch).

Workers write into `PROMETHEUS_MULTIPROC_DIR` (set by the supervisor before it
starts them); the admin app aggregates with `MultiProcessCollector`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ca_server.authority.material import CaMaterial
from ca_server.errors import REFUSAL_REASONS, refusal_label_sets
from ca_server.kube.settings import DEFAULT_CLUSTER_ID

UNKNOWN_CLUSTER = "unknown"

SIGN_ERRORS = ("CA_NOT_READY", "CSR_ERROR", "TTL_ERROR", "CERT_GEN_ERROR", "UNKNOWN")
# Seconds; a certificate normally takes 1-50 ms, a record commit 1-20 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CaMetrics:
    """The CA's counters and gauges; one instance per process."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, own_cluster: str = DEFAULT_CLUSTER_ID
    ) -> None:
        """`own_cluster`: the CA's cluster ID (`kube.settings.own_cluster_id`), the `cluster`
        label of requests naming it or none."""
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            # prometheus_client appends `_total`; `exposition` restores Istio's names.
            return Counter(name, doc, labels, registry=reg)

        self.csr_count = counter("citadel_server_csr_count", "CSRs received")
        self.auth_failures = counter(
            "citadel_server_authentication_failure_count", "Failed authentications"
        )
        self.success = counter("citadel_server_success_cert_issuance_count", "Certificates issued")
        self.sign_errors = counter(
            "citadel_server_csr_sign_err_count", "CSR signing errors", ("error",)
        )
        self.parse_errors = counter(
            "citadel_server_csr_parsing_err_count", "CSRs that failed to parse"
        )
        self.id_errors = counter(
            "citadel_server_id_extraction_err_count", "Identity extraction failures"
        )
        for label in SIGN_ERRORS:
            self.sign_errors.labels(error=label)
        self.refusals = Counter(
            "bulwark_ca_refusals",
            "Calls the CA refused, by reason, gRPC status and the cluster the call named",
            ("reason", "code", "cluster"),
            registry=reg,
        )
        self.issued = Counter(
            "bulwark_ca_issued",
            "Certificates issued, by the cluster the request named",
            ("cluster",),
            registry=reg,
        )
        self._own_cluster = own_cluster
        self._known_clusters: Callable[[], frozenset[str]] = frozenset
        for reason, code in refusal_label_sets():
            self.refusals.labels(
                reason=reason if reason in REFUSAL_REASONS else "internal",
                code=code,
                cluster=own_cluster,
            )
        self.issued.labels(cluster=own_cluster)
        self.jwt_svids_issued = counter(
            "bulwark_ca_jwt_svids_issued", "JWT-SVIDs issued (each recorded before it was sent)"
        )

        self.call_duration = Histogram(
            "bulwark_ca_issue_duration_seconds",
            "Time from a CreateCertificate call's arrival to its answer, issued or refused",
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.record_commit_duration = Histogram(
            "bulwark_ca_record_commit_duration_seconds",
            "Time one issuance-record batch took to commit",
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )

    def label_clusters(self, known: Callable[[], frozenset[str]]) -> None:
        """Besides the own cluster, the cluster IDs that label series as themselves: whatever
        `known()` holds when asked (remote clusters come and go)."""
        self._known_clusters = known

    def cluster(self, cluster_id: str) -> str:
        """The `cluster` label of a request that named `cluster_id` (bounded)."""
        if not cluster_id or cluster_id == self._own_cluster:
            return self._own_cluster
        return cluster_id if cluster_id in self._known_clusters() else UNKNOWN_CLUSTER

    def refused(self, *, reason: str, code: str, cluster_id: str = "") -> None:
        """Count one refusal; a `reason` outside REFUSAL_REASONS counts as `internal`."""
        if reason not in REFUSAL_REASONS:
            reason = "internal"  # keep the label bounded whatever a caller passes
        self.refusals.labels(reason=reason, code=code, cluster=self.cluster(cluster_id)).inc()

    def issued_for(self, cluster_id: str) -> None:
        """Count one issued certificate for the cluster its request named."""
        self.issued.labels(cluster=self.cluster(cluster_id)).inc()


_GAUGES = (
    ("citadel_server_root_cert_expiry_timestamp", "Root certificate expiry (unix seconds)"),
    ("citadel_server_root_cert_expiry_seconds", "Seconds until the root certificate expires"),
    ("citadel_server_cert_chain_expiry_timestamp", "Signing chain expiry (unix seconds)"),
    ("citadel_server_cert_chain_expiry_seconds", "Seconds until the signing chain expires"),
)


def expiry_gauges(material: CaMaterial, now_ts: float) -> str:
    """The four expiry gauges, computed from the material the supervisor holds."""
    root = min(r.not_valid_after_utc.timestamp() for r in material.roots)
    chain = min(c.not_valid_after_utc.timestamp() for c in (material.signing_cert, *material.chain))
    values = (root, root - now_ts, chain, chain - now_ts)
    out = []
    for (name, doc), value in zip(_GAUGES, values, strict=True):
        out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n{name} {value:.3f}\n")
    return "".join(out)


def exposition(multiproc_dir: str, material: CaMaterial | None, now_ts: float) -> bytes:
    """Aggregate every process's counters (renamed to Istio's, without `_total`) plus the gauges."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    lines = []
    for line in text.splitlines():
        if line.startswith("citadel_server_") or line.startswith("# "):
            line = line.replace("_count_total", "_count")
        if "_count_created" in line:
            continue
        lines.append(line)
    gauges = expiry_gauges(material, now_ts) if material is not None else ""
    return ("\n".join(lines) + "\n" + gauges).encode()
