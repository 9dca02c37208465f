"""Bad inputs in data loading and graph building (issue 17): a clear error or the right result.

* a search box vesin cannot grid (a structure spanning ~5e5 Å) used to kill the interpreter
  with SIGFPE: it is searched with the KD-tree instead;
* unreadable data files (truncated or empty npz, a wrong atom count in extxyz, undecodable
  bytes) and a malformed YAML config: a ``DataFileError``/``ConfigError`` naming the file
  and the frame or line; the CLI prints one paragraph, exit code 2, no traceback;
* atoms closer than 0.1 Å: an error naming the file, the frame and the atoms;
* fractional atomic numbers (``[8.0, 1.9, 1.2]`` used to become O, H, H): an error;
* float32 graphs of a structure translated far away: the same energy and forces (the
  positions are brought near the origin in float64 before the cast).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from systems import random_molecule

from allegro_jax.data.datasets import read_dataset
from allegro_jax.data.errors import DataError, DataFileError
from allegro_jax.data.graph import Structure
from allegro_jax.data.neighborlist import neighbor_list, vesin_grid_is_safe

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"

# Runs in a subprocess: before the guard, vesin's SIGFPE killed the interpreter.
_FAR_FLUNG = """
import numpy as np
from allegro_jax.data.neighborlist import neighbor_list
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph

rng = np.random.default_rng(0)
molecule = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
cases = {
    # two water molecules 5e5 A apart along x, and along x and y (elongated boxes)
    "line": (np.concatenate([molecule, molecule + [5e5, 0, 0]]), np.zeros((3, 3)), False),
    "plane": (np.concatenate([molecule, molecule + [1e5, 1e5, 0]]), np.zeros((3, 3)), False),
    # a slab (periodic in x, y) with an atom 1e6 A out in the vacuum
    "slab": (
        np.concatenate([rng.uniform(0, 3, size=(4, 3)), [[1.0, 1.0, 1e6]]]),
        np.diag([3.0, 3.0, 0.0]),
        [True, True, False],
    ),
}
for name, (positions, cell, pbc) in cases.items():
    got = neighbor_list(positions, cell, pbc, 5.0)
    expected = neighbor_list(positions, cell, pbc, 5.0, backend="brute")
    assert all(np.array_equal(a, b) for a, b in zip(got, expected)), name
    print(name, len(got[0]), flush=True)
numbers = [8, 1, 1, 8, 1, 1]
graph = build_graph([Structure(numbers, cases["line"][0])], ("H", "O"), 5.0)
print("graph", int(graph.edge_mask.sum()), flush=True)
"""


def test_a_structure_spanning_5e5_angstrom_does_not_crash_the_neighbour_list():
    proc = subprocess.run(
        [sys.executable, "-c", _FAR_FLUNG], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    words = proc.stdout.split()
    assert words[::2] == ["line", "plane", "slab", "graph"]
    assert words[1] == words[3] == words[7] == "12"  # two separate waters: 2 x 6 edges


@pytest.mark.parametrize(
    "lengths, safe",
    [
        ((5e5, 5.0, 5.0), True),  # 1e5 cells: vesin's cap, not above it
        ((5.0e5 + 10.0, 5.0, 5.0), False),  # 1e5 + 2 cells: rescaled to 0 along y, z
        ((1600.0, 1600.0, 5.0), False),
        ((300.0, 300.0, 300.0), True),  # many cells, but a cube: rescaled evenly
        ((1e6, 1e6, 1e6), True),
    ],
)
def test_vesin_grid_guard(lengths, safe):
    assert vesin_grid_is_safe(np.diag(lengths), 5.0) is safe


def test_kdtree_backend_matches_brute_force_far_apart():
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3e5, 0.0, 0.0], [3e5, 1.5, 0.0]])
    got = neighbor_list(positions, np.zeros((3, 3)), False, 2.0, backend="kdtree")
    expected = neighbor_list(positions, np.zeros((3, 3)), False, 2.0, backend="brute")
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- unreadable files ------------------------------------------------------------------------


def _water_frames(n: int = 4) -> list:
    import ase.build
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(n):
        atoms = ase.build.molecule("H2O")
        atoms.positions += 0.01 * k
        atoms.calc = SinglePointCalculator(atoms, energy=-14.0 - 0.1 * k, forces=np.zeros((3, 3)))
        frames.append(atoms)
    return frames


def _good_extxyz(path: Path) -> list[str]:
    import ase.io

    ase.io.write(path, _water_frames())
    return path.read_text().splitlines(keepends=True)  # 4 frames of 5 lines


def _bad_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex its DataFileError must match)."""
    lines = _good_extxyz(directory / "good.extxyz")
    out = {}

    def write(name: str, text: str | bytes, pattern: str):
        path = directory / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        out[name] = (path, pattern)

    more = lines.copy()
    more[10] = "4\n"  # frame 2 announces 4 atoms, has 3
    write("more_atoms.extxyz", "".join(more), r"frame 2 \(atom count 4 at line 11\): line 16")
    fewer = lines.copy()
    fewer[10] = "2\n"  # frame 2 announces 2 atoms, has 3
    write("fewer_atoms.extxyz", "".join(fewer), r"frame 3 should start at line 15.*count 2")
    raw = "".join(lines).encode()
    garbled = raw[:300] + b"\xff\xfe" + raw[302:]
    write("undecodable.extxyz", garbled, r"frame 0: line 5 is not UTF-8")
    write("cut.extxyz", "".join(lines)[:-40], r"frame 3 .*line 20, its atom 2, has \d column")
    write("empty.extxyz", "", r"empty \(0 bytes\)")
    np.savez(
        directory / "good.npz",
        nuclear_charges=np.array([8, 1, 1]),
        coords=np.zeros((2, 3, 3)) + [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
        energies=np.zeros(2),
        forces=np.zeros((2, 3, 3)),
    )
    npz = (directory / "good.npz").read_bytes()
    write("truncated.npz", npz[: len(npz) // 2], r"truncated, damaged or not an npz.*BadZipFile")
    write("empty.npz", b"", r"cannot read this npz file: the file is empty")
    write("text.npz", "hello", r"not an npz archive")
    return out


def test_unreadable_data_files_raise_data_file_errors_naming_file_and_frame(tmp_path):
    bad = _bad_files(tmp_path)
    assert len(read_dataset(tmp_path / "good.extxyz")) == 4
    assert len(read_dataset(tmp_path / "good.npz")) == 2
    for name, (path, pattern) in bad.items():
        with pytest.raises(DataFileError, match=pattern) as err:
            read_dataset(path)
        assert str(path) in str(err.value), name


def _train_cli(tmp_path: Path, config: dict | str, capsys) -> tuple[int, str]:
    from allegro_jax.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    capsys.readouterr()
    code = main(["train", str(path), "--workdir", str(tmp_path / "run")])
    return code, capsys.readouterr().err


def test_the_cli_reports_bad_files_and_configs_in_one_paragraph(tmp_path, capsys):
    bad = _bad_files(tmp_path)
    base = yaml.safe_load(TEST_YAML.read_text()) | {"n_train": 1, "n_val": 1}
    for name in ("truncated.npz", "empty.npz", "more_atoms.extxyz", "undecodable.extxyz"):
        path, pattern = bad[name]
        code, err = _train_cli(tmp_path, base | {"dataset_file_name": str(path)}, capsys)
        assert code == 2, (name, err)
        assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    # a malformed YAML config: the line, no traceback
    code, err = _train_cli(tmp_path, "r_max: 4.0\nl_max: [1, 2\nbatch_size: 4\n", capsys)
    assert code == 2 and "not valid YAML at line 3" in err and "Traceback" not in err
    code, err = _train_cli(tmp_path, "r_max: 4.0\n\tl_max: 1\n", capsys)
    assert code == 2 and "not valid YAML at line 2" in err


# ---- overlapping atoms ---------------------------------------------------------------------


def test_atoms_closer_than_0_1_angstrom_are_an_error_naming_file_frame_and_atoms(tmp_path, capsys):
    from allegro_jax.data.padding import build_graph

    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    close = water.copy()
    close[2] = close[1] + [0.0, 0.05, 0.0]  # the two H 0.05 Å apart
    with pytest.raises(DataError, match=r"structure 1: atoms 1 and 2 are only 0.05 Å apart"):
        build_graph([Structure([8, 1, 1], water), Structure([8, 1, 1], close)], ("H", "O"), 4.0)
    assert build_graph([Structure([8, 1, 1], water)], ("H", "O"), 4.0).edge_mask.sum() == 6
    # in training data: the file and the frame (not the position in the shuffled split)
    import ase.io

    frames = _water_frames(6)
    frames[4].positions[2] = frames[4].positions[1] + [0.0, 0.05, 0.0]
    path = tmp_path / "close.extxyz"
    ase.io.write(path, frames)
    base = yaml.safe_load(TEST_YAML.read_text()) | {"n_train": 4, "n_val": 2}
    code, err = _train_cli(tmp_path, base | {"dataset_file_name": str(path)}, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}, frame 4: atoms 1 and 2 are only 0.05 Å apart"), err
    assert "closer than min_distance 0.1 Å" in err and "fix or remove it" in err


# ---- fractional atomic numbers -------------------------------------------------------------


def test_fractional_atomic_numbers_are_an_error(tmp_path):
    positions = [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]
    with pytest.raises(ValueError, match=r"atom 1 has 1.9 \(2 non-integer value\(s\)\)"):
        Structure(numbers=[8.0, 1.9, 1.2], positions=positions)
    assert Structure(numbers=[8.0, 1.0, 1.0], positions=positions).numbers.tolist() == [8, 1, 1]
    path = tmp_path / "fractional.npz"
    np.savez(
        path,
        nuclear_charges=np.array([8.0, 1.9, 1.2]),
        coords=np.array([positions] * 2),
        energies=np.zeros(2),
        forces=np.zeros((2, 3, 3)),
    )
    with pytest.raises(DataError, match=rf"{path}: nuclear_charges: .*atom 1 has 1.9"):
        read_dataset(path)


# ---- float32 precision far from the origin -------------------------------------------------


@pytest.fixture(scope="module")
def float32_model():
    import jax

    from allegro_jax.config import AllegroConfig
    from allegro_jax.nn.model import make_model

    config = AllegroConfig(
        type_names=("O", "Si"),
        r_max=4.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        avg_num_neighbors=10.0,
        model_dtype="float32",
    )
    init_fn, apply_fn = make_model(config)
    params = init_fn(jax.random.PRNGKey(0))
    apply = jax.jit(apply_fn, static_argnames=("forces", "stress"))
    return config, params, apply


def _predict(model, structure: Structure, stress: bool = False) -> dict:
    from allegro_jax.data.padding import build_graph

    config, params, apply = model
    graph = build_graph([structure], config.type_names, config.r_max, dtype=np.float32)
    assert graph.positions.dtype == np.float32
    out = apply(params, graph, stress=stress)
    n = structure.n_atoms
    result = {"energy": float(out["energy"][0]), "forces": np.asarray(out["forces"][:n])}
    if stress:
        result["stress"] = np.asarray(out["stress"][0])
    return result


def test_float32_energy_and_forces_do_not_change_far_from_the_origin(float32_model):
    molecule = random_molecule(np.random.default_rng(0), n=6, numbers=(8, 14), min_dist=1.0)
    near = _predict(float32_model, molecule)
    for offset in (1e6, -3.3e5):
        moved = offset * np.array([1.0, 0.7, -0.2]) + molecule.positions
        far = _predict(float32_model, Structure(molecule.numbers, moved))
        np.testing.assert_allclose(far["energy"], near["energy"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(far["forces"], near["forces"], rtol=1e-5, atol=1e-6)


def test_float32_periodic_structure_unwrapped_and_translated(float32_model):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.numbers[::4] = 8
    atoms.rattle(0.05, seed=1)
    cell, positions = np.asarray(atoms.cell), atoms.positions
    near = _predict(float32_model, Structure(atoms.numbers, positions, cell, True), stress=True)
    rng = np.random.default_rng(1)
    unwrapped = positions + rng.integers(-3000, 3000, size=(len(atoms), 3)) @ cell + 2.5e5
    far = _predict(float32_model, Structure(atoms.numbers, unwrapped, cell, True), stress=True)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(far[key], near[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_evaluate_reports_bad_files_in_one_paragraph(tmp_path, float32_model, capsys):
    from allegro_jax.cli import main
    from allegro_jax.io.model import save_model

    config, params, _ = float32_model
    save_model(tmp_path / "model", config, params)
    bad = _bad_files(tmp_path)
    for name in ("truncated.npz", "fewer_atoms.extxyz", "empty.extxyz"):
        path, pattern = bad[name]
        capsys.readouterr()
        code = main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
