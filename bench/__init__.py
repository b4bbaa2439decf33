"""Benchmarks: each module ``bench.<name>`` exposes ``run(quick: bool) -> dict`` with figures beside a
baseline measured in the same run. ``python -m bench NAME [--quick] [--json PATH]``; ``python -m bench all``."""
