"""Run LAMMPS jobs under MPI and report what the tests compare (rank 0 writes JSON).

``mpiexec -n N python lammps_worker.py jobs.json results.json``. Each job is a dict:

* ``input``: a LAMMPS input file (``pair_style allegro/jax`` allowed), run with
  :class:`allegro_jax.lammps.LammpsSession`;
* ``final``: append ``run 0`` with a virial-only pressure compute and gather energy,
  forces, virial pressure, positions, velocities and box (default true);
* ``fail_rank``/``fail_step``: make the force call of that rank raise at that step (to test
  that an error on one rank stops every rank).

A job's result holds ``error`` (the message that stopped it) instead of the gathered
quantities if LAMMPS or allegro-jax stopped it.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from allegro_jax.lammps.provider import AllegroLammps
from allegro_jax.lammps.runner import LammpsSession, configure_jax

FINAL = """
compute allegro_test_vir all pressure NULL virial
thermo_style custom step pe c_allegro_test_vir[*]
thermo_modify format float %.17g
run 0
"""


def gather(lmp, name: str, kind: int, count: int) -> np.ndarray:
    return np.ctypeslib.as_array(lmp.gather_atoms(name, kind, count)).reshape(-1, count).copy()


def run_job(job: dict) -> dict:
    if "fail_rank" in job:
        compute = AllegroLammps.compute

        def failing(self, nlocal):
            step = int(self.lmp.extract_global("ntimestep"))
            if self.rank == job["fail_rank"] and step >= job["fail_step"]:
                raise RuntimeError("injected failure")
            return compute(self, nlocal)

        AllegroLammps.compute = failing
    args = ["-log", job.get("log", "none"), "-screen", "none"]
    result: dict = {"name": job.get("name", "")}
    with LammpsSession(args) as session:
        try:
            session.file(job["input"])
            if job.get("final", True):
                session.commands_string(FINAL)
        except Exception as err:  # noqa: BLE001 - reported to the test
            result["error"] = session.error or str(err)
            return result
        lmp = session.lmp
        boxlo, boxhi, xy, yz, xz = lmp.extract_box()[:5]
        lo, hi = np.asarray(boxlo, dtype=float), np.asarray(boxhi, dtype=float)
        result.update(
            pe=lmp.get_thermo("pe"),
            volume=lmp.get_thermo("vol"),
            pressure_virial=list(lmp.numpy.extract_compute("allegro_test_vir", 0, 1)),
            forces=gather(lmp, "f", 1, 3).tolist(),
            positions=gather(lmp, "x", 1, 3).tolist(),
            velocities=gather(lmp, "v", 1, 3).tolist(),
            cell=[[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]],
            stats=[p.stats.as_dict() for p in session.providers],
        )
        all_stats = session.comm.allgather(result["stats"])
        result["stats_per_rank"] = all_stats
    return result


def main() -> None:
    configure_jax()
    jobs = json.loads(open(sys.argv[1]).read())
    results = [run_job(job) for job in jobs]
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
