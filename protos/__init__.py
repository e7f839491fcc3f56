"""Wire protocols Bulwark speaks.

`protos.istio.v1.auth` holds Istio's certificate service (`ca.proto`) and the
Python code generated from it (`make protos`); `protos.spiffe.workload` holds
the SPIFFE Workload API messages, generated the same way. Envoy's SDS stubs
come from the `xds-protos` package.
"""
