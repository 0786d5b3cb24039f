"""Corruption suite definitions (TOML), shipped as robench.suites.corruptions."""
