#!/usr/bin/env bash
# End to end on a real cluster: a kind cluster, the images built and loaded, the chart
# installed, examples/graphs/ab-test.yaml applied and Ready, a request through a
# port-forward answered by the right model version, the graph deleted, the cluster gone.
#
#   make e2e-kind            # or: bash scripts/e2e-kind.sh
#
# Needs docker, kind, kubectl and helm, and a Python with tritonclient[http] and numpy
# (`make demo` builds .venv with them). Not run in this project's CI: no Docker engine there.
#
# Environment: CLUSTER (servegraph-e2e), TAG (e2e), PYTHON (.venv/bin/python or python3),
# KEEP_CLUSTER=1 leaves the cluster up afterwards, TIMEOUT for kubectl wait (5m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER="${CLUSTER:-servegraph-e2e}"
TAG="${TAG:-e2e}"
TIMEOUT="${TIMEOUT:-5m}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
OPERATOR_NS="servegraph-system"
GRAPH_NS="servegraph-e2e"
GRAPH="ab-test"
CLAIM="servegraph-examples"
OPERATOR_IMAGE="servegraph/operator:${TAG}"
RUNTIME_IMAGE="servegraph/runtime:${TAG}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

WORK="$(mktemp -d)"
FORWARD_PID=""
CREATED_CLUSTER=0

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\ne2e-kind: FAILED: %s\n' "$*" >&2; exit 1; }

diagnose() {
  echo "---- diagnostics ----" >&2
  kubectl get pods -A -o wide >&2 || true
  kubectl -n "$GRAPH_NS" get modeldeployment "$GRAPH" -o yaml >&2 || true
  kubectl -n "$GRAPH_NS" get events --sort-by=.lastTimestamp >&2 || true
  kubectl -n "$OPERATOR_NS" logs deployment/servegraph --tail=200 >&2 || true
}

cleanup() {
  local status=$?
  if [[ -n "$FORWARD_PID" ]]; then kill "$FORWARD_PID" 2>/dev/null || true; fi
  if [[ $status -ne 0 && $CREATED_CLUSTER -eq 1 ]]; then diagnose; fi
  if [[ $CREATED_CLUSTER -eq 1 && "$KEEP_CLUSTER" != "1" ]]; then
    step "Tearing down: kind delete cluster --name $CLUSTER"
    kind delete cluster --name "$CLUSTER" || echo "could not delete cluster $CLUSTER: delete it by hand" >&2
  fi
  rm -rf "$WORK"
  if [[ $status -eq 0 ]]; then echo "e2e-kind: PASSED"; fi
}
trap cleanup EXIT
trap 'fail "line $LINENO: \"$BASH_COMMAND\" exited with $?"' ERR

step "Checking the tools: docker, kind, kubectl, helm, $PYTHON with tritonclient and numpy"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (on PATH): this script needs docker, kind, kubectl and helm"
done
docker info >/dev/null 2>&1 || fail "docker is installed but its engine does not answer (is the daemon running, may this user use it?)"
"$PYTHON" -c 'import numpy, tritonclient.http' 2>/dev/null \
  || fail "$PYTHON cannot import tritonclient.http and numpy: run \`make demo\` (builds .venv) or pip install 'tritonclient[http]' numpy"
ls charts/servegraph/crds/*.yaml >/dev/null 2>&1 \
  || fail "charts/servegraph/crds/ has no CRD: run \`servegraph crd\` then \`python scripts/sync_crds.py\`"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  fail "a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER"
fi

step "Creating the kind cluster $CLUSTER (kind-config.yaml: a control plane and a worker)"
CREATED_CLUSTER=1
kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 3m \
  || fail "kind could not create the cluster"
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "Building the operator image $OPERATOR_IMAGE (images/operator.Dockerfile)"
docker build -f images/operator.Dockerfile -t "$OPERATOR_IMAGE" . || fail "the operator image did not build"

step "Building the runtime image $RUNTIME_IMAGE (images/runtime.Dockerfile)"
docker build -f images/runtime.Dockerfile -t "$RUNTIME_IMAGE" . || fail "the runtime image did not build"

step "Loading both images into the cluster's nodes (kind load docker-image)"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE" || fail "kind could not load the images"

step "Creating namespace $GRAPH_NS for the graph"
kubectl create namespace "$GRAPH_NS"

step "Installing the chart: helm install servegraph charts/servegraph -n $OPERATOR_NS"
helm install servegraph charts/servegraph \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository=servegraph/operator --set image.tag="$TAG" \
  --set runtimeImage.cpu.repository=servegraph/runtime --set runtimeImage.cpu.tag="$TAG" \
  --set "watchNamespaces={$GRAPH_NS}" \
  --set logLevel=debug \
  --wait --timeout 3m \
  || fail "helm install did not finish (is the operator pod running? see the diagnostics)"
kubectl get crd modeldeployments.servegraph.io >/dev/null || fail "the ModelDeployment CRD is not installed"

step "Serving the example models from a PersistentVolume (the worker's /servegraph/examples/models)"
cat >"$WORK/storage.yaml" <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $CLAIM
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: /servegraph/examples/models, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $CLAIM
  namespace: $GRAPH_NS
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: $CLAIM
  resources:
    requests: {storage: 1Gi}
YAML
kubectl apply -f "$WORK/storage.yaml"
kubectl -n "$GRAPH_NS" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$CLAIM" --timeout=1m \
  || fail "the PersistentVolumeClaim $CLAIM is not Bound"

step "Applying examples/graphs/ab-test.yaml (storageUri models/scorer -> pvc://$CLAIM/scorer)"
sed "s|storageUri: models/scorer|storageUri: pvc://$CLAIM/scorer|" examples/graphs/ab-test.yaml >"$WORK/ab-test.yaml"
grep -q "pvc://$CLAIM/scorer" "$WORK/ab-test.yaml" || fail "examples/graphs/ab-test.yaml no longer has storageUri: models/scorer"
kubectl -n "$GRAPH_NS" apply -f "$WORK/ab-test.yaml"

step "Waiting up to $TIMEOUT for modeldeployment/$GRAPH to be Ready"
kubectl -n "$GRAPH_NS" wait --for=condition=Ready "modeldeployment/$GRAPH" --timeout="$TIMEOUT" \
  || fail "modeldeployment/$GRAPH did not become Ready within $TIMEOUT"
kubectl -n "$GRAPH_NS" get modeldeployment "$GRAPH"

step "Port-forwarding to the entry node's pod (the router 'split') on 127.0.0.1:18000 / :18001"
ENTRY="$(kubectl -n "$GRAPH_NS" get "modeldeployment/$GRAPH" -o jsonpath='{.spec.entrypoint}')"
POD="$(kubectl -n "$GRAPH_NS" get pods \
  -l "servegraph.io/deployment=$GRAPH,servegraph.io/node=$ENTRY" \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')"
[[ -n "$POD" ]] || fail "no running pod for node $ENTRY (labels servegraph.io/deployment=$GRAPH, servegraph.io/node=$ENTRY)"
kubectl -n "$GRAPH_NS" port-forward "pod/$POD" 18000:8000 18001:8001 >"$WORK/port-forward.log" 2>&1 &
FORWARD_PID=$!
for _ in $(seq 1 30); do
  if (exec 3<>/dev/tcp/127.0.0.1/18000) 2>/dev/null; then break; fi
  kill -0 "$FORWARD_PID" 2>/dev/null || fail "kubectl port-forward exited: $(cat "$WORK/port-forward.log")"
  sleep 1
done

step "Sending 50 requests with tritonclient and checking each answer against the arm that served it"
"$PYTHON" - "$GRAPH" <<'PY' || fail "the graph's answers were wrong (see above)"
import importlib.util
import sys
from collections import Counter

import numpy as np
import tritonclient.http as httpclient

graph = sys.argv[1]
spec = importlib.util.spec_from_file_location("scorer", "examples/graphs/models/scorer/1/model.py")
scorer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scorer)


def expected(version: int, x: np.ndarray) -> np.ndarray:
    w, b = scorer.weights(version)
    logits = x @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


client = httpclient.InferenceServerClient("127.0.0.1:18000")
assert client.is_server_ready(), "the entry node is not ready"
rng = np.random.default_rng(0)
arms = Counter()
for _ in range(50):
    x = rng.standard_normal((1, 4)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(graph, [tensor])
    arm = str(result.get_response()["parameters"]["servegraph.route"])
    version = {"scorer-a": 1, "scorer-b": 2}[arm]
    np.testing.assert_allclose(result.as_numpy("PROBS"), expected(version, x), rtol=1e-5)
    arms[arm] += 1
print(f"50 answers, each from the version its arm serves: {dict(arms)}")
assert set(arms) == {"scorer-a", "scorer-b"}, f"both arms should serve in 50 requests at 80/20, got {dict(arms)}"
PY
kill "$FORWARD_PID" 2>/dev/null || true
FORWARD_PID=""

step "Deleting modeldeployment/$GRAPH; its Deployments, Services and ConfigMaps go with it"
kubectl -n "$GRAPH_NS" delete "modeldeployment/$GRAPH" --wait --timeout=2m
for _ in $(seq 1 60); do
  left="$(kubectl -n "$GRAPH_NS" get deployments,services,configmaps -l "servegraph.io/deployment=$GRAPH" -o name)"
  [[ -z "$left" ]] && break
  sleep 2
done
[[ -z "$left" ]] || fail "children of $GRAPH are still there 2 minutes after its deletion: $left"

step "Uninstalling the chart"
helm uninstall servegraph --namespace "$OPERATOR_NS" --wait --timeout 2m
