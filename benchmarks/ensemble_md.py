"""Force call of an ensemble in MD: the members scanned (what ``allegro-jax md`` runs since
2026-12-06) against the members vmapped (before), and one member.

On one water frame (``../shared/data/water``, 64 H2O, 192 atoms) with a jax-md periodic
space and neighbour list, it times ``jax.grad`` of the ensemble's mean energy, the force
the integrators take: :func:`allegro_jax.md.ensemble.make_ensemble_energy_fn` (members one
after the other in a ``jax.lax.scan``) against the same mean energy with the members
vmapped, and one member alone; calls interleaved A B C A B C ... in one process, medians
reported with the load average before and after. The model is the water experiment's
architecture (``experiments/water/train.yaml``) with random weights, or ``--model``.

Usage (from the repository root)::

    python -m benchmarks.ensemble_md --members 4 --rounds 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.runinfo import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WATER = REPO.parent / "shared" / "data" / "water" / "water_train.extxyz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
    parser.add_argument("--model", help="a trained single model (default: random weights)")
    parser.add_argument("--out", default=str(HERE / "results" / "ensemble_md.json"))
    args = parser.parse_args()

    import ase.io
    import yaml
    from jax_md import partition, space

    from allegro_jax.config import AllegroConfig
    from allegro_jax.io.model import load_model
    from allegro_jax.md.ensemble import make_ensemble_energy_fn
    from allegro_jax.md.jax_md import make_energy_fn
    from allegro_jax.nn.ensemble import member, stack_members
    from allegro_jax.nn.model import make_model

    load0 = os.getloadavg()[0]
    atoms = ase.io.read(WATER, index=0)
    if args.model:
        config, params, _ = load_model(args.model)
        members = [
            jax.tree.map(lambda x, k=k: x * (1 + 0.01 * k), params) for k in range(args.members)
        ]
    else:
        cfg = yaml.safe_load((REPO / "experiments" / "water" / "train.yaml").read_text())
        keys = [f.name for f in __import__("dataclasses").fields(AllegroConfig)]
        config = AllegroConfig(
            type_names=("H", "O"),
            avg_num_neighbors=30.0,
            **{k: v for k, v in cfg.items() if k in keys and k != "type_names"},
        )
        init = make_model(config)[0]
        members = [init(jax.random.PRNGKey(k)) for k in range(args.members)]
    stacked = stack_members(members)
    box = np.diag(np.asarray(atoms.cell))
    displacement, _ = space.periodic(jnp.asarray(box))
    species = jnp.asarray([config.type_names.index(s) for s in atoms.get_chemical_symbols()])
    neighbor_fn = partition.neighbor_list(
        displacement, jnp.asarray(box), config.r_max + 0.5, format=partition.Sparse
    )
    R = jnp.asarray(atoms.positions % box, dtype=config.dtype)
    nbr = neighbor_fn.allocate(R)

    scanned = make_ensemble_energy_fn(config, stacked, displacement, species=species)

    def vmapped(R, nbr):
        def one(p):
            return make_energy_fn(config, p, displacement, species=species)(R, nbr)

        return jnp.mean(jax.vmap(one)(stacked))

    single = make_energy_fn(config, member(stacked, 0), displacement, species=species)
    fns = {
        "scan": jax.jit(jax.grad(scanned)),
        "vmap": jax.jit(jax.grad(vmapped)),
        "single": jax.jit(jax.grad(single)),
    }
    compile_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(R, nbr))
        compile_s[name] = time.perf_counter() - t0
    np.testing.assert_allclose(fns["scan"](R, nbr), fns["vmap"](R, nbr), rtol=1e-4, atol=1e-5)
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                jax.block_until_ready(fn(R, nbr))
            times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    ms = {name: float(np.median(t)) for name, t in times.items()}
    result = {
        "date": dt.date.today().isoformat(),
        "command": "python -m benchmarks.ensemble_md "
        + f"--members {args.members} --rounds {args.rounds} --calls {args.calls}"
        + (f" --model {args.model}" if args.model else ""),
        "hardware": f"{cpu_model()}; threads: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        "load_average_1min_before_after": [load0, os.getloadavg()[0]],
        "versions": {p: version(p) for p in ("jax", "jaxlib", "jax-md", "flax")},
        "system": f"water, {len(atoms)} atoms, r_max {config.r_max} Å, {config.dtype}",
        "members": args.members,
        "force_call_ms_median": ms,
        "force_call_ms_rounds": times,
        "compile_s": compile_s,
        "vmap_over_scan": ms["vmap"] / ms["scan"],
        "scan_over_k_singles": ms["scan"] / (args.members * ms["single"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"| form | ms per force call ({args.members} members, {len(atoms)} atoms) |")
    print("|---|---:|")
    for name in fns:
        print(f"| {name} | {ms[name]:.2f} |")
    print(
        f"vmap / scan = {result['vmap_over_scan']:.2f}; scan / (K x single) = "
        f"{result['scan_over_k_singles']:.2f}; load {result['load_average_1min_before_after']}"
    )


if __name__ == "__main__":
    main()
