"""Install and operate: the Helm chart, the container images, the plain manifest, GitOps.

Covered, all offline with Helm's own Go library (helm-python-sdk) and no cluster:
- the chart rendered for its defaults and each documented option (watched namespaces vs
  all, metrics Service + ServiceMonitor, NetworkPolicy off, pull secrets, resources,
  scheduling), linted strictly for Kubernetes 1.33, every rendered object validated with
  kubernetes-validate (strict; only the ServiceMonitor, a Prometheus Operator CRD it cannot
  know, is skipped); bad values refused by values.schema.json with a message naming them;
- O11: one replica, Recreate, the operator started standalone; S1: the operator pod meets
  PSS "restricted"; S2 (static half): the RBAC rules from rbac-rules.yaml, no wildcards,
  no escalate/bind/impersonate, no Secrets, a ClusterRole only when watching all
  namespaces; S3: the graph pods' default-deny and allow NetworkPolicies;
- every leaf of values.yaml documented in the chart's README; the chart's crds/ the same
  files as the top-level crds/;
- the Dockerfiles parsed: copied paths exist, pip installs name real extras and groups,
  numeric non-root USER, `servegraph` entrypoint, pinned bases; the operator image
  without numpy or grpc;
- the kind end-to-end script's syntax (`bash -n`) and its Makefile target;
- deploy/servegraph.yaml equal to what scripts/render_install.py renders (drift);
- the Argo CD health check (docs/argocd-health.lua) run by Lua 5.4 on sample statuses.

Left out, and why: building the images and running the kind script need Docker, which
these machines do not have; the second half of S2 (every API call the operator makes is
allowed, every rule is used) needs the operator's kmock suite and lives with it, through
tests/install/rbac.py (``not_allowed``, ``never_used``) over charts/servegraph/rbac-rules.yaml;
so does "re-applying a manifest makes the operator write nothing"; what only a real
apiserver shows (server-side apply, RBAC escalation checks, NetworkPolicy enforcement).
"""
