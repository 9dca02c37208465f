"""The experiments: scripts run from the repository root as modules
(``python -m experiments.rmd17.run ...``), not part of the installed ``allegro_jax``."""
