"""Metrics, leaderboards, reports, the regression gate."""
