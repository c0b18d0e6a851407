"""``servegraph run``: the control plane's second target, a whole graph on one machine.

It renders with the operator's pure functions and starts ``servegraph serve`` processes
where the operator would create Deployments; it is the only place that writes model
repositories and node config files to disk.
"""
