"""allegro-jax: the Allegro interatomic potential in JAX.

Sub-commands: demo (a model on a generated structure), train (a model from a YAML config),
evaluate (its errors on a labelled data file), md (molecular dynamics with it), lammps (a
LAMMPS input run with the model as its force field, under mpiexec), export (a
jax.export artefact of the model) and ensemble (separately trained models stacked into one
ensemble). "allegro-jax <command> --help" describes each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import ase.build
    import jax
    import numpy as np

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from ._malloc import ready_on_device
    from .compiling import compiling
    from .config import AllegroConfig
    from .data.graph import Structure
    from .data.padding import build_graph
    from .nn.model import make_model
    from .nn.xla_options import jit_apply

    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(args.repeat)
    atoms.rattle(0.05, seed=args.seed)
    # turn every 4th atom into O to have two species
    numbers = atoms.get_atomic_numbers()
    numbers[::4] = 8
    atoms.set_atomic_numbers(numbers)
    struct = Structure.from_ase(atoms)
    cfg = AllegroConfig(
        type_names=("O", "Si"),
        r_max=args.r_max,
        generation=args.generation,
        l_max=args.l_max,
        num_layers=args.num_layers,
        num_scalar_features=64,
        num_tensor_features=32,
        avg_num_neighbors=20.0,
        per_type_energy_shifts=(-2.0, -5.0),
        model_dtype=args.dtype,
    )
    np_dtype = np.float64 if args.dtype == "float64" else np.float32
    graph = build_graph([struct], cfg.type_names, cfg.r_max, dtype=np_dtype)
    graph = ready_on_device(graph)  # run on this thread (allegro_jax._malloc)
    init_fn, apply_fn = make_model(cfg)
    apply = jit_apply(apply_fn)
    with compiling(f"the model for {struct.n_atoms} atoms (the first call; later calls reuse it)"):
        params = init_fn(jax.random.PRNGKey(args.seed))
        t0 = time.perf_counter()
        out = jax.block_until_ready(apply(params, graph, stress=True))
        t_compile = time.perf_counter() - t0
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    t0 = time.perf_counter()
    out = jax.block_until_ready(apply(params, graph, stress=True))
    t_call = time.perf_counter() - t0
    n = struct.n_atoms
    forces = np.asarray(out["forces"][:n])
    result = {
        "generation": cfg.generation,
        "n_atoms": n,
        "n_edges": int(np.sum(graph.edge_mask)),
        "n_params": n_params,
        "energy_eV": float(out["energy"][0]),
        "max_force_eV_per_A": float(np.abs(forces).max()),
        "net_force": np.asarray(forces.sum(0)).tolist(),
        "stress_eV_per_A3": np.asarray(out["stress"][0]).tolist(),
        "compile_s": round(t_compile, 3),
        "call_ms": round(1e3 * t_call, 2),
        "backend": jax.default_backend(),
        "dtype": args.dtype,
    }
    print(
        f"Allegro ({cfg.generation}) on {n} atoms of Si/O, {result['n_edges']} edges, "
        f"{n_params} parameters, {args.dtype} on {jax.default_backend()}"
    )
    print(f"  energy        {result['energy_eV']:.6f} eV")
    print(f"  max |F|       {result['max_force_eV_per_A']:.6f} eV/Å")
    print(f"  |sum F|       {np.linalg.norm(forces.sum(0)):.2e} eV/Å (momentum conservation)")
    print(
        "  stress (eV/Å^3):\n"
        + "\n".join(
            "    " + " ".join(f"{v: .6e}" for v in row) for row in result["stress_eV_per_A3"]
        )
    )
    print(f"  first call (compile) {t_compile:.2f} s, next call {1e3 * t_call:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lammps"]:  # LAMMPS-style options (-in, -var, -log): not argparse's
        from .lammps.runner import main as lammps_main

        return lammps_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="allegro-jax",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="build a model and print energy/forces/stress of a generated periodic Si/O structure",
    )
    demo.add_argument("--generation", choices=("current", "paper"), default="current")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument("--l-max", type=int, default=1)
    demo.add_argument("--num-layers", type=int, default=2)
    demo.add_argument("--r-max", type=float, default=5.0)
    demo.add_argument("--repeat", type=int, default=2, help="cubic Si cell repeats")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", help="also write the results to this JSON file")
    demo.set_defaults(func=_demo)
    from .train.cli import add_evaluate_parser, add_train_parser

    add_train_parser(sub)
    add_evaluate_parser(sub)
    from .md.cli import add_md_parser

    add_md_parser(sub)
    from .io.export import add_export_parser

    add_export_parser(sub)
    from .io.combine import add_ensemble_parser

    add_ensemble_parser(sub)
    sub.add_parser(
        "lammps",
        help="run a LAMMPS input with pair_style allegro/jax (allegro-jax lammps -in in.lammps; "
        "under mpiexec on any number of ranks)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
