"""The operator against an emulated Kubernetes API server (``emulator.py``, on kmock 0.8).

Covered: the emulator itself — server-set metadata (uid, a cluster-wide monotonic
resourceVersion, generation, creationTimestamp), typed list responses, label and field
selectors, 404/409 (stale resourceVersion, AlreadyExists)/422 (failed json-patch ``test``),
merge and JSON patches, status-subresource isolation, finalizers and deletion, ownerReference
garbage collection, watches (no lost events, ``?resourceVersion=``, injected 410 Gone),
request recording and fault injection, discovery — and a tiny kopf operator run embedded
against it with the ``kubernetes`` client (create, garbage collection, 410 recovery, no-op
resume; a namespaced operator following an owned Deployment through injected 500 and 429,
with both list-then-watch and initial-events streaming; and one pinned kopf pitfall: a
status patch failing with a non-retriable error is lost for good).

Left out: everything a real apiserver does beyond that — server-side apply, strategic-merge
list semantics (a strategic patch is applied as a merge patch), admission and CRD schema
validation/defaulting/pruning, namespace lifecycle, foreground deletion, RBAC enforcement —
and real controllers (no Deployment controller makes Pods; tests write status themselves).
Use a real cluster (kind) for those.
"""
