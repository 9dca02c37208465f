"""allegro_jax.io.nequip.to_nequip_model: our model config as a nequip-train model mapping.

The parity test (tests/experiments/test_side_by_side_config.py, `parity` extra) builds the
nequip model from it and checks from_nequip gives the config back; here, without torch, the
mapping itself and the refusals.
"""

from __future__ import annotations

import pytest

from allegro_jax import AllegroConfig
from allegro_jax.io.nequip import to_nequip_model

CONFIG = AllegroConfig(
    type_names=("H", "C", "O"),
    r_max=5.0,
    l_max=1,
    num_layers=1,
    num_scalar_features=16,
    num_tensor_features=4,
    avg_num_neighbors=8.0,
    per_type_energy_shifts=(-13.1, -1027.5, -2040.2),
    per_type_energy_scales=(1.0, 1.0, 2.0),
)


def test_mapping_carries_architecture_and_statistics():
    model = to_nequip_model(CONFIG, seed=7)
    assert model["_target_"] == "allegro.model.AllegroModel" and model["seed"] == 7
    assert (model["r_max"], model["l_max"], model["num_layers"]) == (5.0, 1, 1)
    assert model["radial_chemical_embed"]["num_bessels"] == CONFIG.num_bessels
    assert model["per_type_energy_shifts"] == {"H": -13.1, "C": -1027.5, "O": -2040.2}
    assert model["per_type_energy_scales"] == {"H": 1.0, "C": 1.0, "O": 2.0}
    assert model["avg_num_neighbors"] == 8.0
    same = to_nequip_model(CONFIG.replace(per_type_energy_scales=1.5))
    assert same["per_type_energy_scales"] == 1.5  # one number when every type agrees


@pytest.mark.parametrize(
    "change",
    [
        {"generation": "paper"},
        {"allegro_mlp_nonlinearity": "tanh"},
        {"radial_chemical_embed_dim": 8},
    ],
)
def test_what_has_no_nequip_counterpart_is_refused(change):
    with pytest.raises(ValueError):
        to_nequip_model(CONFIG.replace(**change))
