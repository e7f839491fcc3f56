"""What the agent serves: the unix socket it owns, Envoy SDS, the SPIFFE Workload API, SDS resource names, and the loopback status port."""
