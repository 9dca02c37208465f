"""Attempt B's model surgery: a trained model plus a repulsive O–H barrier in its pair
potential, the network weights unchanged."""

from __future__ import annotations

from pathlib import Path

# 1 eV high and zero outside 1.10–1.36 Å, the O–H distances between the longest covalent
# bond (1.138 Å) and the closest second O (1.327 Å) of all DFT frames.
BARRIER = {"kind": "barrier", "types": ["O", "H"], "height": 1.0, "r_lo": 1.10, "r_hi": 1.36}


class AlreadyHasBarrier(ValueError):
    """The model's pair potential has a barrier term already."""


def add_barrier(model: Path, dest: Path) -> Path:
    """Save the model of ``model`` (a run or model folder) plus :data:`BARRIER`, same weights,
    to the model folder ``dest``; its metadata names ``model`` and the added term.

    Raises:
        AlreadyHasBarrier: the model has a barrier (the message lists its pair terms).
    """
    from allegro_jax.io.model import load_model, save_model

    config, params, _ = load_model(model)
    terms = config.to_dict()["pair_potential"]
    if any(term["kind"] == "barrier" for term in terms):
        raise AlreadyHasBarrier(f"already has a barrier: {terms}")
    terms = [*terms, BARRIER]
    return save_model(
        dest,
        config.replace(pair_potential=terms),
        params,
        metadata={"weights_from": str(model), "added": BARRIER},
    )
