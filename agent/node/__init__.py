"""Node mode: one agent per node serves every workload on it (`bulwark agent run --mode node`).

Each connection to the node socket is attested from the kernel outward: the peer process the
kernel names (`peer`: `SO_PEERCRED` and a pidfd), then either its pod (`k8s_attestor`: the
cgroup path parsed by `cgroups`, the pod from a watch of this node's pods in `pods` over the
small API client of `kube_api`) or its uid, gid and executable (`unix_identities`). The
`front` accepts on the node socket itself and relays each attested connection to the gRPC
servers on a private socket, where every call finds its caller's state; the `registry` holds
one state per identity (certificate, renewal, JWT-SVIDs), asked of the CA by the `issuer`
through impersonation, and frees it when its last holder leaves. `resources` says which SDS
names a caller may ask for, `status` reports the identities, `runtime` wires it all.
"""
