"""Wire protocols Bulwark speaks.

`protos.istio.v1.auth` holds Istio's certificate service (`ca.proto`) and the
Python code generated from it (`make protos`). Envoy's SDS stubs come from the
`xds-protos` package and the SPIFFE Workload API stubs from the `spiffe`
package, so they are not copied here.
"""
