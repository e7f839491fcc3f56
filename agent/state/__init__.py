"""What the agent holds: the secret cache and its snapshots, SVIDs, trust bundles, JWT-SVIDs, the JWT-SVID validator, and the renewal of the workload's certificate."""
