"""The control plane: ModelDeployment spec models, manifest rendering and kopf handlers.

Imported as ``servegraph.operator`` (never as a top-level ``operator``, which would shadow
Python's standard library).
"""
