"""New-key rotation of the CA, as SPIRE does it: prepared, active and retired slots (`model`), where they are stored (`store`), and the rotator that moves them (`rotator`)."""
