"""Attack suite definitions (TOML), shipped as robench.suites.attacks."""
