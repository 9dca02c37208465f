"""The package version (one place, read by ``allegro_jax.__version__`` and the exports)."""

__version__ = "0.1.0.dev0"
