"""What the agent serves, and where: the unix socket it owns (`socket_owner`), Envoy's SDS
(`sds`, resource names in `resources`), the SPIFFE Workload API (`workload_api`,
`workload_proto`) and the loopback status port (`status`). The servicers answer each call from
the caller's `agent.state.identity.IdentityState`."""
