"""Readers, unit conversions, error messages, checksums and splits."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from allegro_jax.data import datasets
from allegro_jax.data.datasets import (
    HARTREE_TO_EV,
    KBAR_TO_EV_PER_A3,
    KCAL_PER_MOL_TO_EV,
    ChecksumError,
    DataKeyError,
    QM9Structures,
    download,
    random_split,
    read_ase,
    read_dataset,
    read_qm9,
    read_rmd17,
    recommended_read_kwargs,
    sha256sum,
    stratified_split,
    verify_file,
)

DATA = Path(__file__).parents[2].parent / "shared" / "data"


def _needs(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


# --- constants ------------------------------------------------------------------------------


def test_conversion_factors():
    # The data README's "1 kcal/mol = 43.364 meV" and "1 Ha = 27211.386 meV".
    assert KCAL_PER_MOL_TO_EV * 1e3 == pytest.approx(43.364, abs=5e-4)
    assert KCAL_PER_MOL_TO_EV == pytest.approx(4.184 / 96.48533212331, rel=1e-12)
    assert HARTREE_TO_EV * 1e3 == pytest.approx(27211.386, abs=5e-4)
    # 1 eV/Å^3 = 160.21766 GPa, 1 kbar = 0.1 GPa.
    assert 1.0 / (10 * KBAR_TO_EV_PER_A3) == pytest.approx(160.21766, abs=1e-5)


# --- rMD17 ----------------------------------------------------------------------------------


def _write_rmd17(path: Path, n_frames: int = 4, n_atoms: int = 3, **overrides) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "nuclear_charges": np.array([8, 1, 1][:n_atoms], dtype=np.uint8),
        "coords": rng.normal(size=(n_frames, n_atoms, 3)),
        "energies": np.arange(n_frames, dtype=np.float64) - 100.0,
        "forces": rng.normal(size=(n_frames, n_atoms, 3)),
        "old_indices": np.arange(n_frames) * 7,
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_read_rmd17_synthetic(tmp_path):
    arrays = _write_rmd17(tmp_path / "mol.npz")
    structures = read_rmd17(tmp_path / "mol.npz")
    assert len(structures) == 4
    for f, s in enumerate(structures):
        np.testing.assert_array_equal(s.numbers, [8, 1, 1])
        assert s.numbers.dtype == np.int64
        np.testing.assert_array_equal(s.positions, arrays["coords"][f])
        assert s.energy == pytest.approx(arrays["energies"][f] * KCAL_PER_MOL_TO_EV, rel=1e-15)
        np.testing.assert_allclose(s.forces, arrays["forces"][f] * KCAL_PER_MOL_TO_EV)
        np.testing.assert_array_equal(s.cell, np.zeros((3, 3)))
        assert not s.pbc.any()
        assert s.stress is None
        assert s.info == {"index": f, "md17_index": 7 * f}
    with pytest.raises(ValueError, match="read-only"):
        structures[0].positions[0, 0] = 1.0


def test_read_rmd17_real_frame_units():
    path = _needs("rmd17/rmd17_ethanol_train_01.npz")
    structures = read_rmd17(path)
    assert len(structures) == 1000
    s = structures[0]
    assert s.n_atoms == 9
    np.testing.assert_array_equal(s.numbers, [6, 6, 8, 1, 1, 1, 1, 1, 1])
    # Frame 0: E = -97079.92222178938 kcal/mol, F[0] = (-17.647..., -26.137..., 40.705...).
    assert s.energy == pytest.approx(-97079.92222178938 * 0.0433641042418, rel=1e-12)
    assert s.energy == pytest.approx(-4209.783867011602, abs=1e-9)
    np.testing.assert_allclose(
        s.forces[0], np.array([-17.64730699, -26.13751651, 40.70575377]) * 0.0433641042418
    )
    np.testing.assert_allclose(s.positions[0], [-0.17406277, -0.48797864, 0.0185579], atol=1e-8)
    assert s.info["md17_index"] == 124158


def test_read_rmd17_missing_key(tmp_path):
    _write_rmd17(tmp_path / "mol.npz", forces=None)
    with pytest.raises(KeyError) as excinfo:
        read_rmd17(tmp_path / "mol.npz")
    message = str(excinfo.value)
    assert "mol.npz" in message and "'forces'" in message and "'energies'" in message
    assert isinstance(excinfo.value, DataKeyError)


def test_read_rmd17_nan_names_frame(tmp_path):
    energies = np.zeros(5)
    energies[3] = np.nan
    _write_rmd17(tmp_path / "mol.npz", n_frames=5, energies=energies)
    with pytest.raises(ValueError, match=r"non-finite energies in frame\(s\) 3"):
        read_rmd17(tmp_path / "mol.npz")


def test_read_rmd17_bad_shape(tmp_path):
    _write_rmd17(tmp_path / "mol.npz", energies=np.zeros(3))
    with pytest.raises(ValueError, match="energies has shape"):
        read_rmd17(tmp_path / "mol.npz")


# --- QM9 ------------------------------------------------------------------------------------


def _write_qm9(path: Path, **overrides) -> dict:
    natoms = np.array([5, 3, 1])
    arrays = {
        "natoms": natoms,
        "offsets": np.concatenate([[0], np.cumsum(natoms)]),
        "Z": np.array([6, 1, 1, 1, 1, 8, 1, 1, 10], dtype=np.uint8),
        "R_ang": np.arange(27, dtype=np.float64).reshape(9, 3) / 10,
        "InternalEnergy_0K_au": np.array([-40.0, -76.0, -128.0]),
        "InternalEnergy_298K_au": np.array([-40.1, -76.1, -128.1]),
        "Enthalphy_298K_au": np.array([-40.2, -76.2, -128.2]),
        "GibbsFreeEnergy_298K_au": np.array([-40.3, -76.3, -128.3]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize(
    "target,key",
    [
        ("U0", "InternalEnergy_0K_au"),
        ("U", "InternalEnergy_298K_au"),
        ("H", "Enthalphy_298K_au"),
        ("G", "GibbsFreeEnergy_298K_au"),
    ],
)
def test_read_qm9_synthetic(tmp_path, target, key):
    arrays = _write_qm9(tmp_path / "qm9.npz")
    structures = read_qm9(tmp_path / "qm9.npz", target=target)
    assert [s.n_atoms for s in structures] == [5, 3, 1]
    np.testing.assert_array_equal(structures[1].numbers, [8, 1, 1])
    np.testing.assert_array_equal(structures[1].positions, arrays["R_ang"][5:8])
    for i, s in enumerate(structures):
        assert s.energy == pytest.approx(arrays[key][i] * 27.211386245988, rel=1e-15)
        assert s.forces is None and s.stress is None
        assert not s.pbc.any() and not s.cell.any()
        assert s.info["index"] == i


def test_read_qm9_lazy_matches_eager(tmp_path):
    _write_qm9(tmp_path / "qm9.npz")
    eager = read_qm9(tmp_path / "qm9.npz")
    lazy = read_qm9(tmp_path / "qm9.npz", lazy=True)
    assert isinstance(lazy, QM9Structures) and len(lazy) == 3
    for a, b in zip(eager, lazy, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
    subset = lazy[np.array([2, 0])]
    assert isinstance(subset, QM9Structures)
    assert [s.info["index"] for s in subset] == [2, 0]
    np.testing.assert_array_equal(subset.natoms, [1, 5])
    np.testing.assert_allclose(subset.energies, [eager[2].energy, eager[0].energy])
    assert lazy[-1].info["index"] == 2
    assert [s.info["index"] for s in lazy[1:]] == [1, 2]


def test_read_qm9_errors(tmp_path):
    _write_qm9(tmp_path / "a.npz", Enthalphy_298K_au=None)
    with pytest.raises(DataKeyError, match=r"a\.npz.*'Enthalphy_298K_au'.*'InternalEnergy_0K_au'"):
        read_qm9(tmp_path / "a.npz", target="H")
    with pytest.raises(ValueError, match="unknown QM9 target"):
        read_qm9(tmp_path / "a.npz", target="HOMO")
    _write_qm9(tmp_path / "b.npz", offsets=np.array([0, 5, 7, 9]))
    with pytest.raises(ValueError, match="inconsistent ragged arrays"):
        read_qm9(tmp_path / "b.npz")
    r = np.zeros((9, 3))
    r[6, 1] = np.inf
    _write_qm9(tmp_path / "c.npz", R_ang=r)
    with pytest.raises(ValueError, match=r"non-finite R_ang in molecule\(s\) 1"):
        read_qm9(tmp_path / "c.npz")
    _write_qm9(tmp_path / "d.npz", InternalEnergy_0K_au=np.array([0.0, 0.0, np.nan]))
    with pytest.raises(ValueError, match=r"frame\(s\) 2"):
        read_qm9(tmp_path / "d.npz")


def test_read_qm9_real():
    path = _needs("qm9/qm9_qm9pack.npz")
    data = read_qm9(path, lazy=True)
    assert len(data) == 130831
    methane = data[0]
    np.testing.assert_array_equal(methane.numbers, [6, 1, 1, 1, 1])
    assert methane.energy == pytest.approx(-40.47893 * HARTREE_TO_EV, rel=1e-15)
    assert np.isfinite(data.energies).all()
    assert int(data.natoms.sum()) == 2359210


# --- ASE ------------------------------------------------------------------------------------


def _periodic_atoms(rng) -> ase.Atoms:
    cell = np.diag([4.0, 5.0, 6.0]) + 0.3 * rng.normal(size=(3, 3))
    return ase.Atoms("Cu2Ni2", positions=rng.uniform(0, 4, (4, 3)), cell=cell, pbc=True)


def test_read_ase_roundtrip_ase_convention(tmp_path):
    rng = np.random.default_rng(1)
    frames, expected = [], []
    for _ in range(3):
        atoms = _periodic_atoms(rng)
        stress = rng.normal(size=(3, 3))
        stress = stress + stress.T
        forces = rng.normal(size=(4, 3))
        energy = float(rng.normal())
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
        expected.append((energy, forces, stress))
    ase.io.write(tmp_path / "x.extxyz", frames)
    structures = read_ase(tmp_path / "x.extxyz")
    assert len(structures) == 3
    for s, atoms, (energy, forces, stress) in zip(structures, frames, expected, strict=True):
        assert s.energy == pytest.approx(energy)
        np.testing.assert_allclose(s.forces, forces)
        np.testing.assert_allclose(s.stress, stress)
        np.testing.assert_allclose(s.cell, atoms.cell[:])
        assert s.pbc.all()
    assert [s.info["index"] for s in structures] == [0, 1, 2]
    assert [s.info["index"] for s in read_ase(tmp_path / "x.extxyz", index="1:")] == [1, 2]
    assert [s.info["index"] for s in read_ase(tmp_path / "x.extxyz", index=2)] == [2]


def test_read_ase_custom_keys_units_sign_order(tmp_path):
    rng = np.random.default_rng(2)
    atoms = _periodic_atoms(rng)
    atoms.info["REF_energy"] = -3.5
    atoms.arrays["REF_forces"] = rng.normal(size=(4, 3))
    # A pressure-like tensor in kbar, stored as xx yy zz xy yz xz.
    xx, yy, zz, xy, yz, xz = 1.0, 2.0, 3.0, 4.0, 5.0, 6.0
    atoms.info["virial_kbar"] = np.array([xx, yy, zz, xy, yz, xz])
    atoms.info["config_type"] = "test"
    ase.io.write(tmp_path / "y.extxyz", atoms)
    (s,) = read_ase(
        tmp_path / "y.extxyz",
        energy_key="REF_energy",
        forces_key="REF_forces",
        stress_key="virial_kbar",
        required=("energy", "forces", "stress"),
        stress_unit="kbar",
        stress_sign=-1,
        stress_voigt_order="xx yy zz xy yz xz",
    )
    assert s.energy == -3.5
    np.testing.assert_allclose(s.forces, atoms.arrays["REF_forces"])
    pressure_like = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    np.testing.assert_allclose(s.stress, -pressure_like * 0.1 / 160.2176634)
    assert s.info["config_type"] == "test"
    assert "virial_kbar" not in s.info and "REF_energy" not in s.info


def test_read_ase_missing_key_message(tmp_path):
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.info["energy_dft"] = -1.0
    ase.io.write(tmp_path / "h2.extxyz", [atoms, atoms])
    with pytest.raises(DataKeyError) as excinfo:
        read_ase(tmp_path / "h2.extxyz")
    message = str(excinfo.value)
    assert "h2.extxyz" in message and "frame 0" in message and "'energy'" in message
    assert "energy_dft" in message  # the keys that are there
    (s, _) = read_ase(tmp_path / "h2.extxyz", energy_key="energy_dft", required=("energy",))
    assert s.energy == -1.0 and s.forces is None
    with pytest.raises(ValueError, match="required may only name"):
        read_ase(tmp_path / "h2.extxyz", required=("virial",))
    with pytest.raises(ValueError, match="stress_voigt_order"):
        read_ase(tmp_path / "h2.extxyz", stress_voigt_order="xx yy zz xy xy xz")


def test_read_ase_nan_names_frame(tmp_path):
    frames = []
    for i in range(3):
        atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
        forces = np.zeros((2, 3))
        if i == 2:
            forces[1, 2] = np.nan
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=forces)
        frames.append(atoms)
    ase.io.write(tmp_path / "nan.extxyz", frames)
    with pytest.raises(ValueError, match="non-finite forces in frame 2"):
        read_ase(tmp_path / "nan.extxyz")


def test_read_ase_molecule_gets_zero_cell(tmp_path):
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[50, 50, 50], pbc=False)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)))
    ase.io.write(tmp_path / "mol.extxyz", atoms)
    (s,) = read_ase(tmp_path / "mol.extxyz")
    np.testing.assert_array_equal(s.cell, np.zeros((3, 3)))
    assert not s.pbc.any()


def test_shipped_extxyz_files():
    water = read_dataset(_needs("water/water_valid.extxyz"), index="0:2")
    assert len(water) == 2 and water[0].n_atoms == 192
    np.testing.assert_allclose(np.diag(water[0].cell), 12.444661140441895)
    assert water[0].pbc.all() and water[0].stress is None
    assert water[0].forces.shape == (192, 3)
    acac = read_dataset(_needs("acac/train_300K.xyz"), index=":3")
    assert len(acac) == 3 and acac[0].n_atoms == 15 and not acac[0].pbc.any()
    assert not acac[0].cell.any() and acac[0].info["config_type"] == "300K_MD"
    iso = read_dataset(_needs("3bpa/iso_atoms.xyz"))
    assert sorted(int(s.numbers[0]) for s in iso) == [1, 6, 7, 8]
    assert all(s.forces is None and s.energy is not None for s in iso)
    cu = read_dataset(_needs("mlearn/Cu_test.extxyz"))
    assert all(s.stress is None for s in cu)


def _strain_work_check(structures) -> tuple[float, float]:
    """Fit ``ΔE ≈ slope · V σ:Δε`` between neighbouring strains of each Elastic series."""
    series: dict[tuple[str, str], list] = {}
    for s in structures:
        match = re.search(r"(.*), mode (\d+), strain (-?[\d.]+)", s.info.get("description", ""))
        if match:
            series.setdefault((match[1], match[2]), []).append((float(match[3]), s))
    work, delta_e = [], []
    for frames in series.values():
        frames.sort(key=lambda t: t[0])
        for (_, a), (_, b) in zip(frames[:-1], frames[1:], strict=True):
            deformation = np.linalg.solve(a.cell, b.cell).T  # b.cell = a.cell @ F^T
            strain = 0.5 * (deformation + deformation.T) - np.eye(3)
            volume = 0.5 * (abs(np.linalg.det(a.cell)) + abs(np.linalg.det(b.cell)))
            work.append(volume * np.sum(0.5 * (a.stress + b.stress) * strain))
            delta_e.append(b.energy - a.energy)
    work, delta_e = np.array(work), np.array(delta_e)
    slope = float(work @ delta_e / (work @ work))
    residual = float(np.sqrt(np.mean((delta_e - work) ** 2)) / np.sqrt(np.mean(delta_e**2)))
    return slope, residual


@pytest.mark.parametrize("element", ["Mo", "Si"])
def test_mlearn_stress_convention_against_energies(element):
    """Sign, unit and component order of the mlearn stress, from E(strain) of Elastic frames."""
    path = _needs(f"mlearn/{element}_train.extxyz")
    structures = read_dataset(path)
    slope, residual = _strain_work_check(structures)
    assert 0.95 < slope < 1.02
    assert residual < 0.05
    # VASP's sign kept: the work has the wrong sign.
    flipped = read_dataset(path, stress_sign=1)
    assert _strain_work_check(flipped)[0] < -0.9
    # The order the key's name claims: right for Si, wrong for Mo.
    kwargs = recommended_read_kwargs(path) | {"stress_voigt_order": "xx yy zz xy yz xz"}
    _, residual_named = _strain_work_check(read_ase(path, **kwargs))
    if element == "Mo":
        assert residual_named > 0.1
    else:
        assert residual_named == pytest.approx(residual)


# --- dispatch -------------------------------------------------------------------------------


def test_read_dataset_dispatch(tmp_path):
    _write_rmd17(tmp_path / "mol.npz")
    assert read_dataset(tmp_path / "mol.npz")[0].info["md17_index"] == 0
    _write_qm9(tmp_path / "qm9.npz")
    assert len(read_dataset(tmp_path / "qm9.npz", target="G")) == 3
    assert isinstance(read_dataset(tmp_path / "qm9.npz", lazy=True), QM9Structures)
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match=r"neither rMD17.*'foo'"):
        read_dataset(tmp_path / "other.npz")
    assert recommended_read_kwargs("data/Mo_train.extxyz")["stress_voigt_order"] == (
        "xx yy zz xy xz yz"
    )
    assert recommended_read_kwargs("Si_test.extxyz")["stress_sign"] == -1
    assert recommended_read_kwargs("water_train.extxyz") == {}


# --- checksums and downloads ----------------------------------------------------------------


def test_sha256_and_verify(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256sum(path) == digest
    verify_file(path, digest.upper())
    path.write_bytes(b"abd")
    with pytest.raises(ChecksumError, match=r"f\.bin.*does not match"):
        verify_file(path, digest)


def test_registered_checksums_match_local_files():
    folder = _needs("rmd17")
    assert len(datasets.RMD17_SHA256) == 20
    for filename, digest in datasets.RMD17_SHA256.items():
        verify_file(folder / filename, digest)


def _copy_fetch(source: Path, calls: list):
    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        shutil.copyfile(source / url.rsplit("/", 1)[1], dest)

    return fetch


def test_download_with_fake_fetch(tmp_path):
    source = _needs("rmd17")
    calls: list[str] = []
    paths = download("rmd17_ethanol", tmp_path / "dl", fetch=_copy_fetch(source, calls))
    assert [p.name for p in paths] == ["rmd17_ethanol_train_01.npz", "rmd17_ethanol_test_01.npz"]
    assert calls[0] == (
        "https://raw.githubusercontent.com/andersx/rmd17-npz/"
        "4f6bb0a186822c90d47cd98b7a27991fe0b3173b/rmd17-npz/rmd17_ethanol_train_01.npz"
    )
    assert len(read_rmd17(paths[0])) == 1000
    # Present and valid: no second fetch.
    download("rmd17_ethanol_train_01", tmp_path / "dl", fetch=_copy_fetch(source, calls))
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(p.name for p in paths)


def test_download_rejects_corrupt_files(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    (source / "rmd17_uracil_test_01.npz").write_bytes(b"not the data")
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumError):
        download("rmd17_uracil_test_01", dest, fetch=_copy_fetch(source, []))
    assert list(dest.iterdir()) == []  # nothing left under the final name or as a .part
    # A corrupted existing copy is caught by verify=True and accepted with verify=False.
    (dest / "rmd17_uracil_test_01.npz").write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match="rmd17_uracil_test_01.npz"):
        download("rmd17_uracil_test_01.npz", dest, fetch=_copy_fetch(source, []))
    download("rmd17_uracil_test_01", dest, verify=False, fetch=_copy_fetch(source, []))


def test_download_names(tmp_path):
    with pytest.raises(ValueError, match="unknown download"):
        download("md17_ethanol", tmp_path)
    with pytest.raises(ValueError, match="no registered SHA256"):
        download("rmd17_ethanol_train_02", tmp_path)
    with pytest.raises(ValueError, match="no registered SHA256"):
        download("rmd17_figshare", tmp_path)
    assert len(datasets._resolve("rmd17")) == 20
    calls: list[str] = []

    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes(b"x")

    download("rmd17_ethanol_train_02", tmp_path, allow_unverified=True, fetch=fetch)
    assert calls[0].endswith("/rmd17-npz/rmd17_ethanol_train_02.npz")


# --- splits ---------------------------------------------------------------------------------


def test_random_split():
    train, val = random_split(1000, (950, 50), seed=123)
    assert train.shape == (950,) and val.shape == (50,)
    assert train.dtype == np.int64
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    again = random_split(1000, (950, 50), seed=123)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    other = random_split(1000, (950, 50), seed=124)
    assert not np.array_equal(other[1], val)
    a, b, c = random_split(10, (3, 0, 5), seed=0)
    assert len(a) == 3 and len(b) == 0 and len(c) == 5
    assert len(set(a) | set(c)) == 8
    with pytest.raises(ValueError, match="sum to 1001 > n = 1000"):
        random_split(1000, (951, 50), seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        random_split(10, (-1, 5), seed=0)


def test_stratified_split_draws_every_kind_in_proportion():
    """Mo's training file by kind of cell: each kind gives validation frames in proportion
    (within one of its quota), the nine surfaces at least one, the lone frame none;
    train and validation are disjoint and cover every frame; the seed reproduces it."""
    sizes = {"AIMD 300 K": 35, "AIMD 3000 K": 37, "AIMD 6000 K": 36, "Elastic": 56,
             "Vacancy": 21, "Surface": 9, "lone": 1}  # fmt: skip
    groups = [g for g, n in sizes.items() for _ in range(n)]
    for seed in range(5):
        train, val = stratified_split(groups, 20, seed)
        assert train.dtype == val.dtype == np.int64 and len(val) == 20
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(195))
        drawn = {g: sum(groups[i] == g for i in val) for g in sizes}
        for g, n in sizes.items():
            assert abs(drawn[g] - 20 * n / 195) < 1 + 1e-9, (g, drawn)
        assert drawn["Surface"] >= 1 and drawn["lone"] == 0
    again = stratified_split(groups, 20, 4)
    np.testing.assert_array_equal(again[1], val)
    np.testing.assert_array_equal(again[0], train)
    assert not np.array_equal(stratified_split(groups, 20, 5)[1], val)
    # a kind a random draw of 20 misses: 1 cell in 100 of two, drawn only when n_val allows
    rare = ["bulk"] * 98 + ["surface"] * 2
    assert sorted(groups_of(rare, stratified_split(rare, 5, 0)[1])) == ["bulk"] * 4 + ["surface"]
    assert groups_of(rare, stratified_split(rare, 1, 0)[1]) == ["bulk"]
    # every kind keeps a training frame, unless the validation frames come from another file
    with pytest.raises(ValueError, match="can give 0 to 98 validation items"):
        stratified_split(rare, 99, 0)
    assert len(stratified_split(rare, 100, 0, keep_one=False)[1]) == 100


def groups_of(groups, idx):
    return [groups[i] for i in idx]


def test_read_ase_cells(tmp_path):
    slab = ase.Atoms("Cu", positions=[[0, 0, 0]], cell=[[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    slab.pbc = [True, True, False]
    slab.calc = SinglePointCalculator(slab, energy=-1.0, forces=np.zeros((1, 3)))
    ase.io.write(tmp_path / "slab.extxyz", slab)
    (s,) = read_ase(tmp_path / "slab.extxyz")
    np.testing.assert_array_equal(s.pbc, [True, True, False])
    np.testing.assert_array_equal(s.cell[:2], [[2, 0, 0], [0, 2, 0]])
    bad = slab.copy()
    bad.pbc = True
    bad.calc = SinglePointCalculator(bad, energy=-1.0, forces=np.zeros((1, 3)))
    ase.io.write(tmp_path / "bad.extxyz", bad)
    with pytest.raises(ValueError, match="linearly dependent"):
        read_ase(tmp_path / "bad.extxyz")
