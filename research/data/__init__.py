"""Offline TFDS builders, the grain input pipeline and the per-record transforms."""
