"""The per-pod Bulwark agent: keys, CSRs, rotation, SDS, the SPIFFE Workload API and files."""
