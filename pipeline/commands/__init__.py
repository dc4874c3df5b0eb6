"""The ``cmgan`` subcommands, one module each; pipeline/cli.py registers them.

Each module has ``register(subparsers)``, which adds its subcommand(s) and sets ``func``.
They share flags and the one way flags become a PipelineConfig (``flags.py``) and import
nothing back from the cli.
"""
