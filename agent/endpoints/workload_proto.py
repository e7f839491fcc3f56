"""The SPIFFE Workload API messages, from Bulwark's own generated stubs (`make protos`).

`protos/spiffe/workload/workload.proto` carries the standard's messages; the
agent used to load the `spiffe` package's private `_proto/workload_pb2.py` by
file path, which an upgrade of that package could break. Importing `spiffe`
itself would pull in the whole client library (about 6 MB of resident memory).
"""

from __future__ import annotations

from types import ModuleType

SERVICE = "SpiffeWorkloadAPI"  # the standard's unqualified service name: /SpiffeWorkloadAPI/<rpc>
SECURITY_HEADER = "workload.spiffe.io"


def workload_pb2() -> ModuleType:
    """The generated module of the Workload API messages."""
    from protos.spiffe.workload import workload_pb2 as module

    return module
