"""The ``servegraph`` command: one entry point, one subcommand per job.

    servegraph serve --model-repository DIR     one runtime process (or --node-config FILE)
    servegraph run MANIFEST.yaml                a whole ModelDeployment on this machine
    servegraph validate MANIFEST.yaml           check a manifest and print what is wrong
    servegraph fetch URI DEST                   fetch a storageUri into a model folder
                                                (the model puller a pod's init container runs)
    servegraph operator                         the Kubernetes operator (pip install servegraph[operator])
    servegraph crd [--output DIR]               write the ModelDeployment CRD (default ./crds)
    servegraph spec-reference [--output FILE]   write the spec reference (docs/spec-reference.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from servegraph.runtime.cli import add_serve_parser


def _run(args: argparse.Namespace) -> int:
    from servegraph.local.runner import run

    state_dir = Path(args.state_dir) if args.state_dir else None
    return run(Path(args.manifest), args.host, args.http_port, args.grpc_port, args.metrics_port, state_dir)


def _validate(args: argparse.Namespace) -> int:
    from servegraph.operator.manifest import load_manifest
    from servegraph.operator.validation import validate

    try:
        validate(load_manifest(Path(args.manifest)))
    except ValueError as exc:
        print(f"{args.manifest}: {exc}")
        return 1
    print(f"{args.manifest}: valid")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from servegraph.runtime.storage import StorageError, fetch_model

    try:
        folder = fetch_model(args.uri, Path(args.dest), timeout=args.timeout)
    except StorageError as exc:
        print(f"servegraph fetch: {exc}", file=sys.stderr)
        return 1
    print(f"{args.uri} -> {folder}")
    if args.overrides:
        return _write_repository(args, folder)
    return 0


def _write_repository(args: argparse.Namespace, folder: Path) -> int:
    """In a pod: the fetched folder with the spec's overrides, as a one-model repository."""
    from servegraph.local.repository import write_model_repository
    from servegraph.operator.render import ConfigOverrides, RenderedModel, RenderError

    try:
        overrides = ConfigOverrides.model_validate_json(Path(args.overrides).read_text())
        model = RenderedModel(
            node=overrides.name, model_name=overrides.name, repository_files={overrides.name: folder},
            overrides=overrides, storage_uri=args.uri,
        )  # fmt: skip
        written = write_model_repository(model, Path(args.repository))
    except (OSError, ValueError, RenderError) as exc:
        print(f"servegraph fetch: {exc}", file=sys.stderr)
        return 1
    print(f"{folder} + {args.overrides} -> {written}")
    return 0


def _add_operator(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from servegraph.operator.main import add_operator_parser
    except ImportError:  # kopf and kubernetes come with servegraph[operator]
        missing = subparsers.add_parser("operator", help="the Kubernetes operator (needs servegraph[operator])")
        missing.set_defaults(func=lambda _: _needs_operator_extra())
        return
    add_operator_parser(subparsers)


def _needs_operator_extra() -> int:
    print("servegraph operator: kopf and kubernetes are missing; pip install 'servegraph[operator]'", file=sys.stderr)
    return 2


def _crd(args: argparse.Namespace) -> int:
    from servegraph.operator.crd import FILE_NAME, crd_yaml

    path = Path(args.output) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(crd_yaml())
    print(path)
    return 0


def _spec_reference(args: argparse.Namespace) -> int:
    from servegraph.operator.reference import spec_reference

    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec_reference())
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servegraph", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    run = subparsers.add_parser("run", help="serve a whole ModelDeployment manifest on this machine")
    run.add_argument("manifest", help="a ModelDeployment YAML file")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--http-port", type=int, default=8000, help="the entrypoint's HTTP port (0 = any free)")
    run.add_argument("--grpc-port", type=int, default=8001, help="the entrypoint's gRPC port (0 = any free)")
    run.add_argument("--metrics-port", type=int, default=8002, help="the entrypoint's metrics port (0 = any free)")
    run.add_argument(
        "--state-dir",
        help="where bandit routers keep what they learn across runs"
        " (default: $XDG_STATE_HOME/servegraph/<namespace>/<name>, else ~/.local/state/...)",
    )
    run.set_defaults(func=_run)
    check = subparsers.add_parser("validate", help="check a ModelDeployment manifest")
    check.add_argument("manifest")
    check.set_defaults(func=_validate)
    fetch = subparsers.add_parser("fetch", help="fetch a model's storageUri into a local model folder")
    fetch.add_argument("uri", help="http(s):// archive, s3://bucket/prefix, gs://bucket/prefix, or a local path")
    fetch.add_argument("dest", help="the model folder to create (replaced once the fetch succeeds)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
    fetch.add_argument("--overrides", help="a model node's ConfigOverrides JSON (the operator's ConfigMap)")
    fetch.add_argument("--repository", default="/models", help="with --overrides: the repository to write")
    fetch.set_defaults(func=_fetch)
    _add_operator(subparsers)
    crd = subparsers.add_parser("crd", help="write the ModelDeployment CustomResourceDefinition")
    crd.add_argument("--output", default="crds", help="folder to write servegraph.io_modeldeployments.yaml into")
    crd.set_defaults(func=_crd)
    reference = subparsers.add_parser("spec-reference", help="write the spec reference (Markdown)")
    reference.add_argument("--output", default="docs/spec-reference.md", help="the Markdown file to write")
    reference.set_defaults(func=_spec_reference)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
