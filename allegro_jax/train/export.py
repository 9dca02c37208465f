"""Moved to :mod:`allegro_jax.io.model`; these names stay importable from here."""

from allegro_jax.io.model import (  # noqa: F401
    CONFIG_FILE,
    FORMAT,
    PARAMS_FILE,
    find_model_dir,
    load_model,
    read_ensemble_size,
    read_model_config,
    save_model,
)
