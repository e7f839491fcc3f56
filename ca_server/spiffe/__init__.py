"""SPIFFE beyond X.509 issuance: the trust bundle document, the bundle endpoint, JWT-SVIDs, federation with other trust domains, and the supervisor tasks that keep them current."""
