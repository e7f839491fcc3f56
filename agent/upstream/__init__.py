"""The agent's calls to the CA: CSRs (`caclient`), JWT-SVIDs and trust bundles (`identity_client`, `bundle_poller`), and plain explanations of CA failures (`diagnosis`)."""
