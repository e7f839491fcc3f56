"""What the agent holds and keeps fresh: the secret cache that fans snapshots out to
subscribers (`cache`), SVIDs and root bundles (`svid`), trust bundles (`trust_bundles`),
JWT-SVIDs and their validation (`jwt_cache`, `jwt_validate`), the renewal of the workload's
certificate (`renewal`), and one identity's state as the servicers see it (`identity`)."""
