"""Graph nodes: the same v2 server in another role (router, combiner, transformer).

A node process is configured by one ``NodeConfig`` (``config.py``) that the control plane
renders from a ModelDeployment, for Kubernetes and for ``servegraph run`` alike.
"""
