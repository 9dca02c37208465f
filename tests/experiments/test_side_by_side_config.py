"""experiments/side_by_side: the generated allegro-jax and nequip-train configs describe the
same model, data and training; experiments/acac_ood: its argument and config handling.

No training here. The parity test builds the reference model from the generated nequip
config, imports its weights with ``from_nequip`` and checks that the imported config equals
ours field by field, that the parameter counts agree and that both give the same energy and
forces for a molecule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.acac_ood import run as acac_run
from experiments.side_by_side import run as sbs_run

STATS = {
    "avg_num_neighbors": 8.0,
    "per_type_energy_shifts": [-13.1, -1027.5, -2040.2],
    "per_type_energy_scales": 1.19,
}


@pytest.fixture(scope="module")
def sbs():
    return sbs_run


@pytest.fixture(scope="module")
def acac():
    return acac_run


@pytest.fixture
def configs(sbs, tmp_path):
    return sbs.make_configs(
        str(tmp_path / "train.xyz"), str(tmp_path / "val.xyz"), STATS, str(tmp_path / "nq")
    )


def test_both_configs_use_the_same_data_statistics_and_training(sbs, configs, tmp_path):
    from allegro_jax.train.config import TrainConfig

    ours, nq = configs
    cfg = TrainConfig.from_dict(ours)  # a valid allegro-jax config
    data, module = nq["data"], nq["training_module"]
    assert (cfg.dataset_file_name, cfg.validation_dataset_file_name) == (
        data["train_file_path"],
        data["val_file_path"],
    )
    assert (cfg.n_train, cfg.n_val) == (950, 50)
    assert cfg.batch_size == data["train_dataloader"]["batch_size"] == 5
    assert data["train_dataloader"]["shuffle"] is True
    assert cfg.val_batch_size == data["val_dataloader"]["batch_size"]
    opt = module["optimizer"]
    assert cfg.learning_rate == opt["lr"] == 0.002
    assert list(cfg.optimizer_betas) == opt["betas"] and cfg.optimizer_eps == opt["eps"]
    assert cfg.use_ema and module["_target_"] == "nequip.train.EMALightningModule"
    assert cfg.ema_decay == module["ema_decay"] == 0.99
    sched = module["lr_scheduler"]["scheduler"]
    assert cfg.lr_scheduler_patience == sched["patience"] == 50
    assert (
        cfg.lr_scheduler_factor == sched["factor"]
        and cfg.lr_scheduler_threshold == sched["threshold"]
    )
    assert module["lr_scheduler"]["monitor"] == sbs.MONITOR
    assert module["loss"]["per_atom_energy"] is True
    assert module["loss"]["coeffs"] == {"total_energy": 1.0, "forces": 1.0}
    assert {k: v for k, v in cfg.loss_coeffs.items() if v} == {"total_energy": 1.0, "forces": 1.0}
    # the plateau monitors the validation loss: the same terms as the training loss
    assert {k: module["val_metrics"][k] for k in ("per_atom_energy", "coeffs")} == {
        k: module["loss"][k] for k in ("per_atom_energy", "coeffs")
    }
    model = module["model"]
    assert model["avg_num_neighbors"] == cfg.model["avg_num_neighbors"] == 8.0
    assert list(model["per_type_energy_shifts"].values()) == cfg.model["per_type_energy_shifts"]
    assert model["per_type_energy_scales"] == cfg.model["per_type_energy_scales"]
    early = next(c for c in nq["trainer"]["callbacks"] if "EarlyStopping" in c["_target_"])
    assert early["patience"] == cfg.early_stopping_patiences["validation_loss"]


def test_make_configs_rejects_wrong_number_of_shifts(sbs, tmp_path):
    with pytest.raises(ValueError, match="per_type_energy_shifts needs 3"):
        sbs.make_configs("a", "b", {**STATS, "per_type_energy_shifts": [1.0]}, str(tmp_path))


def test_prepare_writes_the_rmd17_split_for_both(sbs, shared_data, tmp_path):
    """Both configs point at the same files, which hold the 950/50 split of experiments/rmd17."""
    import yaml

    from allegro_jax.data.datasets import read_dataset, recommended_read_kwargs
    from allegro_jax.train.config import TrainConfig
    from allegro_jax.train.run_data import load_splits

    data_dir = shared_data / "rmd17"
    sbs.prepare("ethanol", data_dir, tmp_path)
    ours = yaml.safe_load((tmp_path / "ours.yaml").read_text())
    nq = yaml.safe_load((tmp_path / "nequip" / "config.yaml").read_text())
    assert nq["data"]["train_file_path"] == ours["dataset_file_name"]
    assert nq["data"]["val_file_path"] == ours["validation_dataset_file_name"]
    model = nq["training_module"]["model"]
    assert model["avg_num_neighbors"] == ours["avg_num_neighbors"] > 1
    assert list(model["per_type_energy_shifts"].values()) == ours["per_type_energy_shifts"]
    assert model["per_type_energy_scales"] == ours["per_type_energy_scales"] > 0
    rmd17 = TrainConfig.from_dict(
        {"dataset_file_name": str(data_dir / "rmd17_ethanol_train_01.npz"), "n_train": 950,
         "n_val": 50, "dataset_seed": 0, "r_max": 7.0}
    )  # fmt: skip
    train_ref, val_ref = load_splits(rmd17)
    for name, ref in (("train", train_ref), ("val", val_ref)):
        path = tmp_path / f"{name}.xyz"
        written = read_dataset(path, **recommended_read_kwargs(path))
        assert len(written) == len(ref)
        for a, b in zip(written, ref, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
            np.testing.assert_allclose(a.forces, b.forces, atol=1e-7)
            assert a.energy == pytest.approx(b.energy, abs=1e-9)


@pytest.mark.parity
def test_reference_built_from_its_config_is_our_model(configs):
    """Build nequip-allegro from the generated config, import it: same config, same numbers."""
    pytest.importorskip("allegro", reason="needs the `parity` extra (nequip-allegro)")
    import jax
    import torch
    from allegro.model import AllegroModel
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import NeighborListTransform
    from nequip.utils.global_state import set_global_state
    from systems import random_molecule

    from allegro_jax import make_model
    from allegro_jax.config import AllegroConfig
    from allegro_jax.data.padding import build_graph
    from allegro_jax.io.nequip import from_nequip
    from allegro_jax.train.config import TrainConfig

    ours, nq = configs
    set_global_state()
    kwargs = {k: v for k, v in nq["training_module"]["model"].items() if k != "_target_"}
    ref = AllegroModel(**kwargs)
    imported_cfg, params = from_nequip(ref)
    our_cfg = AllegroConfig.from_dict(TrainConfig.from_dict(ours).model)
    for field in dataclasses.fields(AllegroConfig):
        a, b = getattr(our_cfg, field.name), getattr(imported_cfg, field.name)
        if field.name == "radial_chemical_embed_dim":  # None means num_scalar_features
            assert our_cfg.embed_dim == imported_cfg.embed_dim == 64
        elif field.name.startswith("per_type_energy_") and not field.name.endswith("trainable"):
            np.testing.assert_allclose(np.ravel(a), np.ravel(b), rtol=1e-6, err_msg=field.name)
        elif isinstance(a, float):  # the reference stores its constants in float32
            assert b == pytest.approx(a, rel=1e-6), (field.name, a, b)
        else:
            assert a == b, (field.name, a, b)

    init_fn, apply_fn = make_model(our_cfg)
    fresh = jax.eval_shape(init_fn, jax.random.PRNGKey(0))  # shapes only
    assert jax.tree.structure(fresh) == jax.tree.structure(params)
    assert [x.shape for x in jax.tree.leaves(fresh)] == [x.shape for x in jax.tree.leaves(params)]
    n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(fresh))
    assert n_ours == sum(p.numel() for p in ref.parameters())

    mol = random_molecule(np.random.default_rng(3), 9)
    graph = build_graph([mol], our_cfg.type_names, our_cfg.r_max, dtype=np.float64)
    out = jax.jit(apply_fn)(params, graph)
    data = from_ase(mol.to_ase())
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
        [our_cfg.type_names.index({1: "H", 6: "C", 8: "O"}[int(z)]) for z in mol.numbers]
    )
    ref_out = ref(AtomicDataDict.batched_from_list([NeighborListTransform(our_cfg.r_max)(data)]))
    e_ref = float(ref_out["total_energy"].detach().double().sum())
    f_ref = ref_out["forces"].detach().double().numpy()
    nm = np.asarray(graph.node_mask)
    np.testing.assert_allclose(float(np.asarray(out["energy"])[0]), e_ref, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(out["forces"])[nm], f_ref, atol=1e-5 * np.abs(f_ref).max()
    )


# ---- experiments/acac_ood --------------------------------------------------------------------
def test_acac_config_is_the_cpu_budget_model_at_r_max_5(acac, tmp_path):
    cfg = acac.make_config(tmp_path, budget_minutes=12)
    assert cfg.model["r_max"] == 5.0 and cfg.model["generation"] == "current"
    assert (cfg.model["num_layers"], cfg.model["num_scalar_features"]) == (2, 64)
    assert (cfg.model["num_tensor_features"], cfg.model["l_max"]) == (16, 2)
    assert (cfg.n_train, cfg.n_val, cfg.batch_size) == (450, 50, 5)
    assert cfg.max_wall_time == 720.0 and cfg.test_dataset_file_name is None
    assert cfg.dataset_file_name == str(tmp_path / "train_300K.xyz")
    with pytest.raises(ValueError, match="budget-minutes must be > 0"):
        acac.make_config(tmp_path, budget_minutes=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-minutes", "-1"], "budget-minutes must be > 0"),
        (["--cores", "a,b"], "--cores must be comma-separated"),
        (["--cores", "-1"], "--cores must be comma-separated"),
    ],
)
def test_acac_bad_arguments_are_named(acac, argv, message, capsys):
    with pytest.raises(SystemExit):
        acac.parse_args(argv)
    assert message in capsys.readouterr().err


def test_acac_missing_data_is_named(acac, tmp_path):
    args = acac.parse_args(["--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    with pytest.raises(FileNotFoundError, match="train_300K.xyz"):
        acac.run(args, "cmd")


def test_acac_table_has_both_temperatures(acac):
    assert "not yet run" in acac.render_table({})
    entry = {m: 1.0 for m in acac.METRICS}
    ours = {
        "test": {"300K": entry, "600K": {m: 2.5 for m in acac.METRICS}},
        "epochs": 3,
        "train_wall_s": 700.0,
        "budget_minutes": 12,
    }
    table = acac.render_table({"ours": ours})
    row = next(line for line in table.splitlines() if line.startswith("| allegro-jax"))
    assert row.count("| 1.0 ") == 4 and row.count("| 2.5 ") == 4 and "12 min" in row
