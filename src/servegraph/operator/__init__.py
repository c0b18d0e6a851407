"""The control plane: ModelDeployment spec models, manifest rendering and kopf handlers.

Imports only the runtime's config schema (node and model configs, datatype names); never
its serving, protocol-transport or backend code, so the operator's image carries no numpy,
grpc or aiohttp. The contracts in pyproject.toml ([tool.importlinter]) check this.
"""
