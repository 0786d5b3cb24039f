"""Attention diagnostics and the QUEST toy experiment."""
