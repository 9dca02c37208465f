"""Dynamics inside LAMMPS with the model: NVE conserves energy as well as our jax-md NVE,
NPT runs and LAMMPS's pressure equals the model's stress, a restart continues the
trajectory. Two MPI ranks each; float64."""

from __future__ import annotations

import numpy as np
import pytest
from lammps_helpers import (
    NKTV2P,
    lammps_virial,
    make_model_dir,
    reference,
    run_worker,
    tiny_config,
    triclinic_cell,
    water,
)

from allegro_jax.data.graph import Structure
from allegro_jax.lammps.data import write_lammps_data

pytestmark = [pytest.mark.lammps, pytest.mark.usefixtures("requires_lammps")]

TYPES = ("H", "O", "Si")
HEAD = """units metal
atom_style atomic
{read}
pair_style allegro/jax nodes 512 edges 4096
pair_coeff * * {model}
neighbor 0.5 bin
"""
DT_FS = 0.5
STEPS = 400


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    config = tiny_config(TYPES, "float64")
    model, params = make_model_dir(root / "model", config, seed=2)
    return root, config, model, params


@pytest.fixture(scope="module")
def md_runs(setup, jax_cache):
    """One 2-rank launch: NVE (water), NPT (triclinic O/Si), restart A and B (water)."""
    root, config, model, params = setup
    rng = np.random.default_rng(0)
    box = water()
    masses = np.where(box.numbers == 1, 1.008, 15.999)
    v = rng.normal(size=(box.n_atoms, 3)) * np.sqrt(8.617333e-5 * 300 / masses)[:, None]
    v -= np.sum(masses[:, None] * v, axis=0) / masses.sum()  # sqrt(eV/amu)
    v_fs = v * 0.09822694788464063  # Å/fs (1 sqrt(eV/amu) = 0.0982269 Å/fs)
    framed = write_lammps_data(root / "water.data", box, ("O", "H"), velocities=v_fs * 1000)
    write_lammps_data(root / "tric.data", triclinic_cell(), ("Si", "O"))
    head_w = HEAD.format(read=f"read_data {root / 'water.data'}", model=model)
    head_t = HEAD.format(read=f"read_data {root / 'tric.data'}", model=model)
    (root / "in.nve").write_text(
        head_w
        + f"""timestep {DT_FS / 1000}
fix 1 all nve
variable etot equal etotal
fix e all print 10 "$(step) ${{etot}}" file {root / "etot.txt"} screen no
thermo 100
run {STEPS}
unfix e
"""
    )
    (root / "in.npt").write_text(
        head_t
        + """timestep 0.0005
velocity all create 300 5 mom yes rot no
run 0
variable p0 equal press
variable p equal ${p0}
fix 1 all npt temp 300 300 0.05 iso ${p} ${p} 0.25
thermo 25
run 100
unfix 1
"""
    )
    thermostat = "fix 1 all nvt temp 300 300 0.05\ntimestep 0.0005\n"
    (root / "in.restart_a").write_text(
        head_w + thermostat + f"run 20\nwrite_restart {root / 'r.restart'}\nrun 20\n"
    )
    (root / "in.restart_b").write_text(
        HEAD.format(read=f"read_restart {root / 'r.restart'}", model=model)
        + thermostat
        + "run 20\n"
    )
    jobs = [{"name": n, "input": str(root / f"in.{n}")} for n in ("nve", "npt", "restart_a")]
    jobs.append({"name": "restart_b", "input": str(root / "in.restart_b")})
    results = {r["name"]: r for r in run_worker(jobs, 2, root, cache_dir=jax_cache)}
    for r in results.values():
        assert "error" not in r, r.get("error")
    return root, framed, v_fs, results


def test_nve_conserves_energy_like_jax_md(setup, md_runs):
    from allegro_jax.md.integrate import make_simulation

    _, config, _, params = setup
    root, framed, v_fs, _ = md_runs
    lammps_e = np.loadtxt(root / "etot.txt")[:, 1]
    species = np.array([TYPES.index(s) for s in framed.to_ase().get_chemical_symbols()])
    init_fn, apply_fn = make_simulation(
        config,
        params,
        species,
        cell=framed.cell,
        timestep_fs=DT_FS,
        skin=0.5,
        log_every=10,
        logs_per_chunk=STEPS // 10,
        log_pressure=False,
    )
    state, log = apply_fn(init_fn(None, framed.positions, velocities=v_fs), STEPS)
    jax_md_e = np.asarray(log.total_energy, dtype=np.float64)
    drift_lammps = np.max(np.abs(lammps_e - lammps_e[0]))
    drift_jax_md = np.max(np.abs(jax_md_e - jax_md_e[0]))
    print(
        f"\nNVE {STEPS} x {DT_FS} fs, {framed.n_atoms} atoms: max |E - E0| LAMMPS (2 ranks) "
        f"{drift_lammps:.2e} eV, jax-md {drift_jax_md:.2e} eV; "
        f"E0 {lammps_e[0]:.6f} vs {jax_md_e[0]:.6f}"
    )
    assert len(lammps_e) == STEPS // 10 + 1
    # same initial state (LAMMPS's and our kinetic-energy constants differ by ~1e-7)
    assert abs(lammps_e[0] - jax_md_e[0]) < 1e-5 * abs(lammps_e[0])
    assert drift_lammps < 1e-6 * abs(lammps_e[0])
    assert drift_lammps <= 2.0 * drift_jax_md + 1e-6


def test_npt_runs_and_pressure_equals_model_stress(setup, md_runs):
    _, config, _, params = setup
    root, _, _, results = md_runs
    r = results["npt"]
    start = write_lammps_data(root / "tric_check.data", triclinic_cell(), ("Si", "O"))
    assert abs(r["volume"] - abs(np.linalg.det(start.cell))) > 1e-3 * r["volume"]  # box moved
    final = Structure(numbers=start.numbers, positions=r["positions"], cell=r["cell"], pbc=True)
    ref = reference(config, params, final)
    w = lammps_virial(r["pressure_virial"], r["volume"])
    # LAMMPS's (virial) pressure tensor is minus our stress, in bar
    pressure = np.asarray(r["pressure_virial"])
    stress_bar = -ref["stress"] * NKTV2P
    want = stress_bar[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    print(f"\nNPT final volume {r['volume']:.3f} Å^3, pressure (virial) {pressure.round(2)} bar")
    np.testing.assert_allclose(pressure, want, rtol=0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_allclose(w, ref["virial"], rtol=0, atol=1e-10 * np.abs(ref["virial"]).max())
    assert abs(r["pe"] - ref["energy"]) < 1e-10 * abs(ref["energy"])


def test_restart_continues_the_trajectory(md_runs):
    a, b = md_runs[3]["restart_a"], md_runs[3]["restart_b"]
    dx = np.abs(a["positions"] - b["positions"]).max()
    dv = np.abs(a["velocities"] - b["velocities"]).max()
    print(f"\nrestart: max |Δx| {dx:.1e} Å, max |Δv| {dv:.1e} Å/ps after 20 + 20 steps")
    assert dx < 1e-9 and dv < 1e-7
    assert abs(a["pe"] - b["pe"]) < 1e-9 * abs(a["pe"])
