"""allegro-jax and nequip-allegro side by side (rMD17 aspirin and ethanol, CPU)."""
