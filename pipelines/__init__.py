"""This repository's Dagster code location (not installed; found from the repository root):
two models built by `event_sourcing.dagster`'s factory, the relay job and the demo.

`pipelines.definitions.defs` is the code location (workspace.yaml loads it).
"""
