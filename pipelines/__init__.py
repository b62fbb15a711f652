"""The Dagster side of mlevents: an ML pipeline whose every step is an event in the store.

`pipelines.definitions.defs` is the code location; assets, jobs, sensors and schedules live
in modules named for what they produce.
"""
