"""Experiments: one module per paper experiment, each with `get_config(arg=None)`."""
