"""Weight-level parity with the reference, nequip-allegro 0.8.3 (pytest -m parity).

A reference model is built with random weights, converted with
``allegro_jax.io.nequip.from_nequip`` and both are evaluated on the same graph (the same
edges and cell shifts): rMD17 aspirin frames batched with a periodic triclinic
two-species cell. Relative error = max |ours - ref| / max |ref| per quantity.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from systems import random_periodic

pytest.importorskip("allegro", reason="needs the `parity` extra (nequip-allegro)")
torch = pytest.importorskip("torch")

from allegro_jax import make_model  # noqa: E402
from allegro_jax.data.graph import AtomicGraph, Structure  # noqa: E402
from allegro_jax.data.padding import build_graph  # noqa: E402
from allegro_jax.io.nequip import from_nequip, load_nequip  # noqa: E402

pytestmark = pytest.mark.parity

TYPE_NAMES = ["H", "C", "O", "Si"]
R_MAX = 4.0
TOL = {"float64": 1e-10, "float32": 1e-5}


def reference_model(dtype: str, l_max: int, num_layers: int, coupling: bool, seed: int = 0, **kw):
    from allegro.model import AllegroModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    args = dict(
        seed=seed,
        model_dtype=dtype,
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        l_max=l_max,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        num_layers=num_layers,
        num_scalar_features=32,
        num_tensor_features=8,
        tp_path_channel_coupling=coupling,
        avg_num_neighbors=11.7,
        per_type_energy_scales={"H": 0.9, "C": 1.3, "O": 1.1, "Si": 0.8},
        per_type_energy_shifts={"H": -13.6, "C": -1029.0, "O": -2041.0, "Si": -103.0},
    )
    args.update(kw)
    return AllegroModel(**args)


def to_nequip(graph: AtomicGraph) -> dict:
    """Our padded batch -> a nequip batched AtomicDataDict with the same edges (float64)."""
    nm, em, gm = (
        np.asarray(graph.node_mask),
        np.asarray(graph.edge_mask),
        np.asarray(graph.graph_mask),
    )
    n_graphs = int(gm.sum())
    return {
        "pos": torch.tensor(np.asarray(graph.positions, np.float64)[nm]),
        "atom_types": torch.tensor(np.asarray(graph.species)[nm], dtype=torch.long),
        "edge_index": torch.tensor(
            np.stack([np.asarray(graph.edge_center)[em], np.asarray(graph.edge_neighbor)[em]]),
            dtype=torch.long,
        ),
        "edge_cell_shift": torch.tensor(np.asarray(graph.edge_shift, np.float64)[em]),
        "cell": torch.tensor(np.asarray(graph.cell, np.float64)[:n_graphs]),
        "pbc": torch.tensor(np.asarray(graph.pbc)[:n_graphs]),
        "batch": torch.tensor(np.asarray(graph.node_graph)[nm], dtype=torch.long),
        "num_atoms": torch.tensor(np.asarray(graph.n_node)[:n_graphs], dtype=torch.long),
    }


PARITY_LOG: dict[str, dict] = {}


def record_parity(dtype: str, key, errs: dict) -> None:
    """Collect errors; written to $ALLEGRO_PARITY_REPORT (JSON) at the end if set."""
    import json
    import os

    PARITY_LOG[f"{dtype} l_max={key[0]} layers={key[1]} coupling={key[2]}"] = errs
    path = os.environ.get("ALLEGRO_PARITY_REPORT")
    if path:
        worst = {
            d: max(
                (max(v.values()) for k, v in PARITY_LOG.items() if k.startswith(d)), default=None
            )
            for d in ("float64", "float32")
        }
        with open(path, "w") as f:
            json.dump({"max_relative_error": worst, "cases": PARITY_LOG}, f, indent=1)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def structures(shared_data_or_none):
    rng = np.random.default_rng(11)
    out = []
    if shared_data_or_none is not None:
        d = np.load(shared_data_or_none / "rmd17" / "rmd17_aspirin_train_01.npz")
        for i in (0, 500):
            out.append(Structure(numbers=d["nuclear_charges"], positions=d["coords"][i]))
    else:  # a generated aspirin-sized molecule
        from systems import random_molecule

        out.append(random_molecule(rng, 21, numbers=(1, 6, 8)))
    out.append(random_periodic(rng, 6, numbers=(14, 8)))
    return out


@pytest.fixture(scope="module")
def shared_data_or_none():
    from systems import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None


def compare(ref_model, structures, positions_dtype=np.float64) -> dict[str, float]:
    cfg, params = from_nequip(ref_model)
    graph = build_graph(structures, TYPE_NAMES, R_MAX, dtype=positions_dtype)
    _, apply_fn = make_model(cfg)
    ours = jax.jit(apply_fn, static_argnames=("forces", "stress"))(params, graph, stress=True)
    ref = ref_model(to_nequip(graph))
    nm = np.asarray(graph.node_mask)
    n_graphs = len(structures)
    periodic = [i for i, s in enumerate(structures) if s.pbc.any()]
    return {
        "energy": rel_err(
            np.asarray(ours["energy"])[:n_graphs], ref["total_energy"].detach().numpy().ravel()
        ),
        "forces": rel_err(np.asarray(ours["forces"])[nm], ref["forces"].detach().numpy()),
        "stress": rel_err(
            np.asarray(ours["stress"])[periodic],
            ref["stress"].detach().numpy().reshape(-1, 3, 3)[periodic],
        ),
        "atomic_energies": rel_err(
            np.asarray(ours["atomic_energies"])[nm], ref["atomic_energy"].detach().numpy().ravel()
        ),
    }


# float64 over the whole grid; float32 on the l_max x layers corners with both couplings
GRID = [("float64", *c) for c in itertools.product([1, 2, 3], [1, 2, 3], [True, False])]
GRID += [("float32", l, n, c) for l, n, c in itertools.product([1, 2, 3], [1, 3], [True, False])]


@pytest.mark.slow
@pytest.mark.parametrize("dtype,l_max,num_layers,coupling", GRID)
def test_parity_fresh_model(dtype, l_max, num_layers, coupling, structures):
    ref = reference_model(dtype, l_max, num_layers, coupling, seed=l_max * 10 + num_layers)
    errs = compare(ref, structures)
    record_parity(dtype, (l_max, num_layers, coupling), errs)
    assert max(errs.values()) <= TOL[dtype], errs


def test_parity_float32_positions(structures):
    """Fully float32 inputs (x64 off in practice) still meet the float32 tolerance."""
    ref = reference_model("float32", 2, 2, True)
    errs = compare(ref, structures, positions_dtype=np.float32)
    assert max(errs.values()) <= TOL["float32"], errs


def test_parity_trainable_and_per_type_options(structures):
    ref = reference_model(
        "float64",
        2,
        2,
        True,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 6,
            "bessel_trainable": True,
            "polynomial_cutoff_p": 5,
        },
        avg_num_neighbors={"H": 8.0, "C": 12.0, "O": 10.0, "Si": 15.0},
        per_type_energy_scales_trainable=True,
        per_type_energy_shifts_trainable=True,
        readout_mlp_hidden_layers_depth=2,
        allegro_mlp_hidden_layers_depth=2,
    )
    with torch.no_grad():  # move trainable constants away from their init
        for name, p in ref.named_parameters():
            if "bessel_weights" in name or "scales" in name or "shifts" in name:
                p.mul_(1.1)
    errs = compare(ref, structures)
    assert max(errs.values()) <= TOL["float64"], errs


NEQUIP_TRAIN_YAML = """
run: [train]
seed: 1
cutoff_radius: 4.0
model_type_names: [C, O, H]
chemical_species: ${model_type_names}
dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 1}
data:
  _target_: nequip.data.datamodule.ASEDataModule
  seed: ${seed}
  split_dataset:
    file_path: FRAMES
    train: 6
    val: 2
  transforms:
    - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
      model_type_names: ${model_type_names}
      chemical_species_to_atom_type_map: ${list_to_identity_dict:${chemical_species}}
    - _target_: nequip.data.transforms.NeighborListTransform
      r_max: ${cutoff_radius}
  train_dataloader: ${dataloader}
  val_dataloader: ${dataloader}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${model_type_names}
trainer:
  _target_: lightning.Trainer
  max_epochs: 1
  enable_progress_bar: false
  callbacks:
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      dirpath: ${hydra:runtime.output_dir}
      filename: last
      save_last: false
training_module:
  _target_: nequip.train.EMALightningModule
  loss: {_target_: nequip.train.EnergyForceLoss, per_atom_energy: true,
         coeffs: {total_energy: 1.0, forces: 1.0}}
  val_metrics: {_target_: nequip.train.EnergyForceMetrics,
                coeffs: {total_energy_mae: 1.0, forces_mae: 1.0}}
  optimizer: {_target_: torch.optim.Adam, lr: 0.01}
  model:
    _target_: allegro.model.AllegroModel
    seed: ${seed}
    model_dtype: float64
    type_names: ${model_type_names}
    r_max: ${cutoff_radius}
    l_max: 2
    num_layers: 2
    num_scalar_features: 16
    num_tensor_features: 4
    radial_chemical_embed: {_target_: allegro.nn.TwoBodyBesselScalarEmbed, num_bessels: 8}
    allegro_mlp_hidden_layers_width: 16
    avg_num_neighbors: ${training_data_stats:num_neighbors_mean}
    per_type_energy_shifts: ${training_data_stats:per_atom_energy_mean}
    per_type_energy_scales: ${training_data_stats:forces_rms}
"""


@pytest.fixture(scope="module")
def trained_reference(tmp_path_factory):
    """Train nequip-allegro for one epoch with ``nequip-train``, then ``nequip-package`` it."""
    import shutil
    import subprocess

    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from systems import random_molecule

    bindir = Path(sys.executable).parent
    if not (bindir / "nequip-train").exists() and shutil.which("nequip-train") is None:
        pytest.skip("nequip-train is not installed")
    exe = lambda name: str(bindir / name) if (bindir / name).exists() else name  # noqa: E731
    work = tmp_path_factory.mktemp("nequip")
    rng = np.random.default_rng(4)
    frames = []
    for _ in range(8):
        s = random_molecule(rng, 9, numbers=(1, 6, 8))
        a = s.to_ase()
        a.calc = SinglePointCalculator(
            a, energy=float(rng.normal(-50, 1)), forces=rng.normal(size=(9, 3))
        )
        frames.append(a)
    ase.io.write(work / "frames.xyz", frames, format="extxyz")
    (work / "train.yaml").write_text(NEQUIP_TRAIN_YAML.replace("FRAMES", str(work / "frames.xyz")))
    env = {**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE"}

    def run(*cmd):
        return subprocess.run(
            cmd,
            cwd=work,
            env=env,
            capture_output=True,  # noqa: E731
            text=True,
            timeout=600,
        )

    r = run(exe("nequip-train"), "-cp", str(work), "-cn", "train.yaml", f"hydra.run.dir={work}/out")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(
        exe("nequip-package"),
        "build",
        str(work / "out" / "last.ckpt"),
        str(work / "out" / "model.nequip.zip"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "out"


@pytest.mark.parametrize("filename", ["last.ckpt", "model.nequip.zip"])
def test_parity_trained_checkpoint_and_package(trained_reference, filename, structures):
    """A model trained by nequip-train, as a checkpoint and as a nequip-package file."""
    ref = load_nequip(str(trained_reference / filename))
    cfg, _ = from_nequip(ref)
    assert cfg.type_names == ("C", "O", "H") and cfg.avg_num_neighbors > 1
    mols = [s for s in structures if not s.pbc.any()]
    cfg, params = from_nequip(ref)
    graph = build_graph(mols, cfg.type_names, cfg.r_max, dtype=np.float64)
    _, apply_fn = make_model(cfg)
    ours = jax.jit(apply_fn)(params, graph)
    out = ref(to_nequip(graph))
    nm = np.asarray(graph.node_mask)
    e_err = rel_err(
        np.asarray(ours["energy"])[: len(mols)], out["total_energy"].detach().numpy().ravel()
    )
    f_err = rel_err(np.asarray(ours["forces"])[nm], out["forces"].detach().numpy())
    assert max(e_err, f_err) <= TOL["float64"], (e_err, f_err)


def test_unsupported_reference_features_raise():
    ref = reference_model(
        "float64",
        1,
        1,
        True,
        pair_potential={
            "_target_": "nequip.nn.pair_potential.ZBL",
            "units": "metal",
            "chemical_species": TYPE_NAMES,
        },
    )
    with pytest.raises(ValueError, match="pair potential"):
        from_nequip(ref)
