"""AllegroConfig validation: bad settings fail early with messages that name the problem."""

from pathlib import Path

import jax
import numpy as np
import pytest

import allegro_jax
from allegro_jax import AllegroConfig, make_model


def cfg(**kw):
    base = dict(type_names=("H", "O"), r_max=4.0, avg_num_neighbors=10.0)
    base.update(kw)
    return AllegroConfig(**base)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(r_max=0.0), "r_max must be > 0"),
        (dict(r_max=-1.0), "r_max must be > 0"),
        (dict(r_max=float("nan")), "r_max must be a finite number"),
        (dict(type_names=("H", "Xx")), "unknown chemical symbols"),
        (dict(type_names=("H", "H")), "duplicates"),
        (dict(type_names="HO"), "sequence of symbols"),
        (dict(generation="v3"), "generation must be one of"),
        (dict(model_dtype="float16"), "model_dtype"),
        (dict(num_layers=0), "num_layers must be >= 1"),
        (dict(l_max=-1), "l_max must be >= 0"),
        (dict(num_scalar_features=63), "radial_chemical_embed_dim must be even"),
        (dict(avg_num_neighbors=-3.0), "avg_num_neighbors must be > 0"),
        (dict(per_type_energy_shifts=(1.0,)), "has 1 entries but there are 2 types"),
        (dict(per_type_energy_shifts={"H": 1.0}), "missing \\['O'\\]"),
        (dict(allegro_mlp_nonlinearity="relu6"), "allegro_mlp_nonlinearity must be one of"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cfg(**kw)


def test_per_type_forms_and_round_trip():
    c = cfg(
        per_type_energy_shifts={"O": -2.0, "H": -1.0},
        per_type_energy_scales=1.5,
        avg_num_neighbors=[8.0, 12.0],
    )
    assert c.per_type_energy_shifts == (-1.0, -2.0)
    assert c.per_type_energy_scales == (1.5, 1.5)
    assert c.avg_num_neighbors_per_type() == (8.0, 12.0)
    assert AllegroConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown model config keys"):
        AllegroConfig.from_dict({**c.to_dict(), "rmax": 3.0})


def test_float64_without_x64_is_a_clear_error():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            make_model(cfg(model_dtype="float64"))
    finally:
        jax.config.update("jax_enable_x64", True)


def test_training_config_validates_the_model_section_naming_the_key():
    from allegro_jax.train.config import TrainConfig

    base = {"dataset_file_name": "x.npz", "n_val": 2, "r_max": 4.0}
    for bad, key in (
        ({"l_max": -1}, "l_max"),
        ({"model_dtype": "float16"}, "model_dtype"),
        ({"num_layers": "two"}, "num_layers"),
        ({"type_names": ["H", "O"], "per_type_energy_shifts": [1.0]}, "per_type_energy_shifts"),
    ):
        with pytest.raises(ValueError, match=f"^model: .*{key}"):
            TrainConfig.from_dict({**base, **bad})
    # the statistics may be missing, and per-type values wait for the training set's types
    config = TrainConfig.from_dict({**base, "per_type_energy_shifts": [1.0, 2.0]})
    assert config.dtype is np.float32
    assert TrainConfig.from_dict({**base, "model_dtype": "float64"}).dtype is np.float64


def test_allegro_config_dtype():
    assert AllegroConfig(type_names=("H",), r_max=3.0).dtype is np.float32
    assert AllegroConfig(type_names=("H",), r_max=3.0, model_dtype="float64").dtype is np.float64


def test_packaged_configs_find_their_data_through_the_data_directory(tmp_path, monkeypatch):
    from allegro_jax.train.config import DATA_DIR_ENV, load_config

    configs = Path(allegro_jax.__file__).parent / "train" / "configs"
    (tmp_path / "rmd17").mkdir()
    for name in ("rmd17_aspirin_train_01.npz", "rmd17_aspirin_test_01.npz"):
        (tmp_path / "rmd17" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    for config_file in sorted(configs.glob("*.yaml")):
        config = load_config(config_file)
        monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
        for key in ("dataset_file_name", "test_dataset_file_name"):
            if getattr(config, key):
                assert config.resolve_path(getattr(config, key)).parent == tmp_path / "rmd17"
        monkeypatch.delenv(DATA_DIR_ENV)
        with pytest.raises(FileNotFoundError, match=f"{DATA_DIR_ENV} or --data-dir"):
            config.resolve_path(config.dataset_file_name)
