"""``servegraph operator``: kopf, configured, with the reconciler on a real API client."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf
from kubernetes import client, config

from servegraph.operator.handlers import configure, post_event, register
from servegraph.operator.kube import Kube
from servegraph.operator.reconcile import Reconciler
from servegraph.operator.settings import OperatorSettings


def add_operator_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("operator", help="run the Kubernetes operator for ModelDeployments")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    where.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--liveness-port", type=int, default=8080, help="kopf's /healthz on 0.0.0.0 (0 = off)")
    parser.add_argument("--runtime-image", default=None, help="graph pods' image (env SERVEGRAPH_RUNTIME_IMAGE)")
    parser.add_argument("--runtime-gpu-image", default=None, help="GPU model pods' image (env SERVEGRAPH_RUNTIME_GPU_IMAGE)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run_operator)


def api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere, the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def run_operator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespaces = tuple(args.namespace)
    settings = OperatorSettings.from_env(
        runtime_image=args.runtime_image,
        runtime_gpu_image=args.runtime_gpu_image,
        namespaces=namespaces or None,
    )
    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(Kube(api_client()), settings, notify=post_event)
    register(registry, reconciler)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: object) -> None:
        configure(settings)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: object) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # type: ignore[arg-type]

    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(
        kopf.operator(
            registry=registry,
            namespaces=list(settings.namespaces),
            clusterwide=not settings.namespaces,
            liveness_endpoint=liveness,
            standalone=True,
        )
    )
    return 0
