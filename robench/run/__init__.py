"""Sweep planning, execution, results store, distributed sharding."""
