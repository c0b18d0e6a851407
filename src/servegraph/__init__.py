"""servegraph: serve machine-learning model graphs on Kubernetes.

The data plane lives in :mod:`servegraph.runtime`, the control plane in
:mod:`servegraph.operator`, and ``servegraph run`` (the control plane's local target) in
:mod:`servegraph.local`.
"""

__version__ = "0.1.0"
