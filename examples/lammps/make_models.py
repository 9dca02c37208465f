"""Models and data files for the LAMMPS examples (``in.water_nvt``, ``in.si_npt``).

    python examples/lammps/make_models.py          # writes into examples/lammps/ (~2 min)

Both are small Allegro models (l_max 1, one layer, 32 scalar / 8 tensor features,
r_max 4 Å, float32):

* ``models/si``: TRAINED here, for ~60 s of wall clock, on 60 frames of diamond silicon
  (64 atoms, strained cells, 300-1500 K) labelled by LAMMPS's Stillinger-Weber potential
  (``Si.sw``, shipped with LAMMPS): a real, if small and quickly trained, force field.
* ``models/water``: a RANDOMLY INITIALISED network (energy scale 0.02 eV) on top of fixed
  pair terms (``pair_potential``): Morse O-H and H-H bonds and repulsive O-H and O-O
  barriers between molecules. It shows the mechanics (MPI ranks, thermostat, dumps,
  restarts) at the cost of a real model of its size; it is not a water model.

A model you trained (``allegro-jax train``) is used the same way: name its run directory in
``pair_coeff``. Writes ``models/water``, ``models/si``, ``water.data`` (64 H2O, 192 atoms,
12.4 Å box) and ``si.data`` (diamond Si, 3x3x3 conventional cells, 216 atoms).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def water_structure(n_side: int = 4, spacing: float = 3.1, seed: int = 0):
    from scipy.spatial.transform import Rotation

    from allegro_jax.data.graph import Structure

    rng = np.random.default_rng(seed)
    angle = np.deg2rad(104.5)
    molecule = 0.96 * np.array([[0, 0, 0], [1, 0, 0], [np.cos(angle), np.sin(angle), 0]])
    positions = []
    for index in np.ndindex(n_side, n_side, n_side):
        centre = (np.array(index) + 0.5) * spacing + rng.normal(scale=0.05, size=3)
        rotation = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        positions.append(centre + molecule @ rotation.T)
    return Structure(
        numbers=[8, 1, 1] * n_side**3,
        positions=np.concatenate(positions),
        cell=np.eye(3) * n_side * spacing,
        pbc=True,
    )


def si_structure(repeat: int = 3):
    import ase.build

    from allegro_jax.data.graph import Structure

    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    return Structure.from_ase(atoms)


MODEL = dict(
    r_max=4.0,
    l_max=1,
    num_layers=1,
    num_scalar_features=32,
    num_tensor_features=8,
    model_dtype="float32",
)


def make_model(out: Path, type_names, pair_potential, seed: int, avg_num_neighbors: float):
    import jax

    from allegro_jax.config import AllegroConfig
    from allegro_jax.io.model import save_model
    from allegro_jax.nn.model import make_model as build

    config = AllegroConfig(
        type_names=type_names,
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_scales=0.02,
        pair_potential=pair_potential,
        **MODEL,
    )
    params = build(config)[0](jax.random.PRNGKey(seed))
    save_model(out, config, params, metadata={"note": "random network + Morse pair terms"})


def si_sw_frames(path: Path, n_frames: int, seed: int) -> None:
    """Stillinger-Weber Si frames (extxyz with energy, forces, stress) from LAMMPS."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.lammps._loader import import_lammps

    lammps = import_lammps()
    potential = Path(lammps.__file__).parent / "share" / "lammps" / "potentials" / "Si.sw"
    rng = np.random.default_rng(seed)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"])
    lmp.commands_string(
        f"""units metal
        lattice diamond 5.431
        region box block 0 2 0 2 0 2
        create_box 1 box
        create_atoms 1 box
        mass 1 28.0855
        pair_style sw
        pair_coeff * * {potential} Si
        compute vir all pressure NULL virial
        thermo_style custom step pe c_vir[*]
        timestep 0.001"""
    )
    nktv2p = 1.6021765e6  # LAMMPS metal: bar per eV/Å^3
    side = 2 * 5.431
    frames = []
    for k in range(n_frames):
        lengths = side * (1.0 + rng.uniform(-0.04, 0.04, size=3))
        temperature = rng.uniform(300, 1500)
        lmp.command(
            f"change_box all x final 0 {lengths[0]} y final 0 {lengths[1]} "
            f"z final 0 {lengths[2]} remap units box"
        )
        lmp.command(f"velocity all create {temperature} {k + 1} mom yes rot yes")
        lmp.command(f"fix t all nvt temp {temperature} {temperature} 0.05")
        lmp.command("run 60")
        lmp.command("unfix t")
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3).copy()
        f = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3).copy()
        p = np.array(lmp.numpy.extract_compute("vir", 0, 1))  # xx yy zz xy xz yz, bar
        stress = -np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
        atoms = ase.Atoms(f"Si{len(x)}", positions=x, cell=np.diag(lengths), pbc=True)
        atoms.calc = SinglePointCalculator(
            atoms, energy=lmp.get_thermo("pe"), forces=f, stress=stress / nktv2p
        )
        frames.append(atoms)
    lmp.close()
    ase.io.write(path, frames, format="extxyz")


def train_si(out: Path, seed: int, seconds: float, n_frames: int = 60) -> Path:
    """A small Allegro model trained on Stillinger-Weber Si; returns its run directory."""
    import yaml

    from allegro_jax.train.config import load_config
    from allegro_jax.train.loop import train_and_evaluate

    data = out / "si_sw_train.extxyz"
    si_sw_frames(data, n_frames, seed)
    n_val = max(1, n_frames // 6)
    config = {
        "dataset_file_name": str(data),
        "n_train": n_frames - n_val,
        "n_val": n_val,
        "seed": seed,
        **MODEL,
        "batch_size": 5,
        "learning_rate": 0.01,
        "lr_scheduler_patience": 5,
        "loss_coeffs": {"total_energy": 1.0, "forces": 1.0, "stress": 1.0},
        "max_epochs": 400,
        "max_wall_time": seconds,
        "progress_bar": False,
        "tensorboard": False,
    }
    yaml_path = out / "si_train.yaml"
    yaml_path.write_text(yaml.safe_dump(config))
    run = out / "models" / "si"
    train_and_evaluate(load_config(yaml_path), run)
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--frames", type=int, default=60, help="Stillinger-Weber Si frames")
    args = parser.parse_args(argv)
    from allegro_jax.lammps.data import write_lammps_data

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    water_pairs = [
        {"kind": "morse", "types": ["O", "H"], "D": 4.48, "a": 2.287, "r0": 0.981, "r_cut": 1.5},
        {"kind": "morse", "types": ["H", "H"], "D": 0.3, "a": 2.0, "r0": 1.52, "r_cut": 1.9},
        {"kind": "barrier", "types": ["O", "H"], "height": 0.5, "r_lo": 1.25, "r_hi": 1.9},
        {"kind": "barrier", "types": ["O", "O"], "height": 0.3, "r_lo": 2.0, "r_hi": 2.8},
    ]
    make_model(out / "models" / "water", ("H", "O"), water_pairs, args.seed, 30.0)
    train_si(out, args.seed, args.train_seconds, args.frames)
    write_lammps_data(out / "water.data", water_structure(seed=args.seed), ("O", "H"))
    write_lammps_data(out / "si.data", si_structure(), ("Si",))
    print(f"wrote models/water, models/si, water.data, si.data in {out}")


if __name__ == "__main__":
    main()
