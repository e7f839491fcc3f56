"""The SPIFFE Workload API messages, taken from the `spiffe` package's generated stubs.

Importing `spiffe._proto` runs `spiffe/__init__.py`, which pulls in the whole
client library (pyjwt, pyasn1...) and costs the agent about 6 MB of resident
memory. This module loads only the generated `workload_pb2.py` file. The
descriptors are identical, so the upb descriptor pool shares them (and their
message classes) with `spiffe._proto.workload_pb2` when a process loads both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_MODULE = "agent._spiffe_workload_pb2"
SERVICE = "SpiffeWorkloadAPI"
SECURITY_HEADER = "workload.spiffe.io"


def workload_pb2() -> ModuleType:
    """The generated module of spiffe/spiffe `standards/workloadapi.proto`."""
    loaded = sys.modules.get("spiffe._proto.workload_pb2") or sys.modules.get(_MODULE)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("spiffe")  # finds without importing the package
    if package is None or not package.submodule_search_locations:
        raise ImportError("the 'spiffe' package (Workload API stubs) is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "_proto" / "workload_pb2.py"
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    spec.loader.exec_module(module)
    return module
