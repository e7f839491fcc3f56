"""The agent's calls to the CA: the CSR (`caclient`), JWT-SVIDs and trust bundles over the
same connection (`identity_client`, polled by `bundle_poller`), and plain explanations of a
CA that cannot be reached or refuses (`diagnosis`)."""
