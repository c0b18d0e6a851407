"""Graph nodes (router, combiner, transformer) as real servers, called with tritonclient.

Every node test runs real v2 servers on 127.0.0.1 in the test's event loop: the children
are python models on an in-process servegraph server (``serve``), the node another one
(``serve_node``, the same ``Server`` in node mode), the caller tritonclient's aio clients
over gRPC and HTTP.

Covered: Weighted split within a binomial tolerance on a fixed seed; Header routing on an
HTTP header, gRPC metadata and a request parameter, with the default and the no-match 400;
EpsilonGreedy and ThompsonSampling converging to the better arm on simulated rewards; bandit
state surviving a node restart through its state file; feedback over HTTP and gRPC, for an
unknown id, with a bad reward, to a model; Shadow copies counted by the shadow child while
the caller sees only the primary; nested routes and feedback passed on to an inner router;
failover; each combiner method against numpy (pure and live), Skip with a quorum when a
child is down and Fail naming the child; StandardScaler -> model -> OutlierDetector against
numpy, flags on planted outliers, the drift p-value falling when inputs shift, MinMaxScaler
from a params file, a Python step; a stopped child (503 naming it, readiness off and back
on), a hung child under a caller deadline and under the node's default timeout (504 naming
it, no hang), a failing child (500) and a rejecting child (400); a scripted gRPC child
answering any status (test_backpressure.py): queue-full as 503 with the child's retry hint
and readiness untouched, every other status as the node's matching one, failover skipping a
child that is not ready, a hung child named at a 1 s gRPC deadline; metadata, config and
statistics of a node through tritonclient; the pure parts (combine, bandits, feedback
memory, state file, detectors) on their own.

Left out: ``servegraph serve --node-config`` as a subprocess (``servegraph run``'s tests
start nodes that way); non-servegraph children (Triton, MLServer: they speak the same v2
gRPC, which tritonclient checks on our side); timing of any kind (no latency assertions:
Shadow's "no added latency" is shown by the caller never waiting on a shadow, not by a
clock).
"""
