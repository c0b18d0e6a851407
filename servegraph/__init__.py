"""servegraph: serve machine-learning model graphs on Kubernetes.

The data plane lives in :mod:`servegraph.runtime`, the control plane in
:mod:`servegraph.operator`.
"""

__version__ = "0.1.0"
