"""Corruption engine (batched torch ops) and the imagecorruptions reference backend."""
