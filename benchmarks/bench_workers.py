"""Measurement workers of ``benchmarks/run.py``, one framework per subprocess.

Each worker reads a JSON job description (``--job``) and writes a JSON result (``--out``):

* ``prepare``: build the reference model (nequip-allegro, fixed seed), convert it with
  ``from_nequip`` and pickle ``(config, params)`` for ``ours``;
* ``aot``: AOT-Inductor-compile the same reference model (``nequip-compile``'s ``ase``
  target, one thread, as ``reference-howto.md`` prescribes);
* ``ours``: allegro-jax energy+forces per system, the jitted training step, a jax-md
  step;
* ``ref``: the reference in one ``mode``: ``eager`` (energy+forces and the training step),
  ``aot`` (energy+forces from the compiled artefact) or
  ``compile-train`` (nequip's training-time ``torch.compile``).

The reference model is rebuilt from its seed in every worker (same weights; checked by
comparing energies). Graphs (edges, cell shifts) come from ``build_graph`` in every worker,
so both frameworks see identical edges.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TYPE_NAMES = ("H", "C", "O", "Si")
AVG_NUM_NEIGHBORS = 20.0


# ---------------------------------------------------------------------------------------
# systems
# ---------------------------------------------------------------------------------------


def aspirin_structures(n: int, labels: bool = False):
    from allegro_jax import Structure

    d = np.load(SHARED / "rmd17" / "rmd17_aspirin_train_01.npz")
    out = []
    for i in range(n):
        kw = {}
        if labels:
            kw = dict(energy=float(d["energies"][i]), forces=d["forces"][i])
        out.append(Structure(numbers=d["nuclear_charges"], positions=d["coords"][i], **kw))
    return out


def water_structures():
    import ase.io

    from allegro_jax import Structure

    atoms = ase.io.read(SHARED / "water" / "water_train.extxyz", index=0)
    return [Structure.from_ase(atoms)]


def si_atoms(n_rep: int):
    import ase.build

    si = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat((n_rep,) * 3)
    si.rattle(0.05, seed=0)
    return si


def si_structures(n_rep: int):
    from allegro_jax import Structure

    return [Structure.from_ase(si_atoms(n_rep))]


def system_structures(name: str):
    """``aspirin x1``, ``aspirin x32``, ``water 192``, ``Si <n_rep>^3x8``."""
    if name.startswith("aspirin x"):
        return aspirin_structures(int(name.split("x")[1]))
    if name == "water 192":
        return water_structures()
    if name.startswith("Si "):
        n_atoms = int(name.split()[1])
        n_rep = round((n_atoms / 8) ** (1 / 3))
        assert 8 * n_rep**3 == n_atoms, name
        return si_structures(n_rep)
    raise ValueError(f"unknown system {name!r}")


def graph_of(name: str, r_max: float):
    from allegro_jax.data.padding import build_graph

    return build_graph(system_structures(name), TYPE_NAMES, r_max)


def graph_counts(graph) -> dict:
    return {
        "atoms": int(np.sum(graph.node_mask)),
        "edges": int(np.sum(graph.edge_mask)),
        "graphs": int(np.sum(graph.graph_mask)),
        "padded_nodes": int(graph.node_mask.shape[0]),
        "padded_edges": int(graph.edge_mask.shape[0]),
    }


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_calls(fn, min_time: float, max_repeats: int, min_repeats: int = 3) -> dict:
    """Median wall time of ``fn()`` (already warmed up) in ms, and the repeats taken."""
    ts = []
    t_start = time.perf_counter()
    while len(ts) < max_repeats and (
        len(ts) < min_repeats or time.perf_counter() - t_start < min_time
    ):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {
        "ms": 1e3 * float(np.median(ts)),
        "ms_min": 1e3 * float(np.min(ts)),
        "repeats": len(ts),
    }


def reference_model(spec: dict, compile_mode: str | None = None):
    import torch
    from allegro.model import AllegroModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    S = spec["S"]
    kw = {} if compile_mode is None else {"compile_mode": compile_mode}
    return AllegroModel(
        seed=spec.get("seed", 0),
        model_dtype="float32",
        type_names=list(TYPE_NAMES),
        r_max=spec["r_max"],
        l_max=spec["l_max"],
        parity=True,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 8,
            "polynomial_cutoff_p": 6,
        },
        radial_chemical_embed_dim=S,
        scalar_embed_mlp_hidden_layers_depth=1,
        scalar_embed_mlp_hidden_layers_width=S,
        num_layers=spec["num_layers"],
        num_scalar_features=S,
        num_tensor_features=spec["C"],
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=S,
        readout_mlp_hidden_layers_depth=1,
        readout_mlp_hidden_layers_width=S,
        tp_path_channel_coupling=True,
        avg_num_neighbors=AVG_NUM_NEIGHBORS,
        **kw,
    )


def nequip_batch(graph, single_frame: bool = False) -> dict:
    """Our padded graph -> a nequip data dict (float32) with the same edges.

    ``single_frame``: the whole batch as one frame without batch keys (the inputs of
    ``nequip-compile``'s ``ase`` target); molecules get a 100 Å cell with pbc off.
    """
    import torch

    nm, em = np.asarray(graph.node_mask), np.asarray(graph.edge_mask)
    gm = np.asarray(graph.graph_mask)
    n_graphs = int(gm.sum())
    edge_index = np.stack([np.asarray(graph.edge_center)[em], np.asarray(graph.edge_neighbor)[em]])
    data = {
        "pos": torch.tensor(np.asarray(graph.positions, np.float32)[nm]),
        "atom_types": torch.tensor(np.asarray(graph.species)[nm], dtype=torch.long),
        "edge_index": torch.tensor(edge_index, dtype=torch.long),
        "edge_cell_shift": torch.tensor(np.asarray(graph.edge_shift, np.float32)[em]),
    }
    cell = np.asarray(graph.cell, np.float32)[:n_graphs]
    pbc = np.asarray(graph.pbc)[:n_graphs]
    if single_frame:
        c = cell[0] if n_graphs == 1 and np.abs(cell[0]).sum() > 0 else 100.0 * np.eye(3)
        data["cell"] = torch.tensor(np.asarray(c, np.float32)[None])
        data["pbc"] = torch.tensor(pbc[:1] if n_graphs == 1 else np.zeros((1, 3), bool))
        return data
    cell = np.where(np.abs(cell).sum(axis=(1, 2))[:, None, None] > 0, cell, 100.0 * np.eye(3))
    data["cell"] = torch.tensor(np.asarray(cell, np.float32))
    data["pbc"] = torch.tensor(pbc)
    data["batch"] = torch.tensor(np.asarray(graph.node_graph)[nm], dtype=torch.long)
    data["num_atoms"] = torch.tensor(np.asarray(graph.n_node)[:n_graphs], dtype=torch.long)
    return data


def energy_check(energy_total: float, forces: np.ndarray) -> dict:
    return {"energy_sum": float(energy_total), "forces": np.asarray(forces, np.float64).tolist()}


# ---------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------


def worker_prepare(job: dict) -> dict:
    from allegro_jax.io.nequip import from_nequip

    model = reference_model(job["spec"])
    cfg, params = from_nequip(model)
    n_params = int(sum(p.numel() for p in model.parameters()))
    with open(job["params_path"], "wb") as f:
        pickle.dump((cfg, params), f)
    return {"n_params": n_params}


def worker_aot(job: dict) -> dict:
    import torch
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT
    from nequip.utils.aot import aot_export_model

    torch.set_num_threads(1)
    model = reference_model(job["spec"])
    model.eval()
    g = graph_of("Si 64", job["spec"]["r_max"])
    data = nequip_batch(g, single_frame=True)
    data["pos"].requires_grad_(False)
    target = COMPILE_TARGET_DICT["ase"]
    batch_map = target["batch_map_settings"](
        {
            "graph": torch.export.Dim("num_frames", min=2),
            "node": torch.export.Dim("num_nodes", min=2),
            "edge": torch.export.Dim("num_edges", min=2),
        }
    )
    metadata = {k: (str(int(v)) if isinstance(v, bool) else v) for k, v in model.metadata.items()}
    from nequip.utils.aoti_metadata import (
        NEQUIP_AOTI_INPUTS_KEY,
        NEQUIP_AOTI_OUTPUTS_KEY,
        serialize_aoti_keys,
    )
    from nequip.utils.global_state import get_latest_global_state

    metadata.update(get_latest_global_state(only_metadata_related=True))
    metadata = {k: (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in metadata.items()}
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(target["input"])
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(target["output"])
    t0 = time.perf_counter()
    aot_export_model(
        model=model,
        device="cpu",
        input_fields=target["input"],
        output_fields=target["output"],
        data=data,
        batch_map=batch_map,
        output_path=job["pt2_path"],
        inductor_configs={"aot_inductor.metadata": metadata},
    )
    return {"compile_s": time.perf_counter() - t0}


def worker_ours(job: dict) -> dict:
    import jax
    import optax  # noqa: F401  (import cost outside the timings)

    from allegro_jax import make_model

    with open(job["params_path"], "rb") as f:
        cfg, params = pickle.load(f)
    init_fn, apply_fn = make_model(cfg)
    params = jax.device_put(params)
    out: dict = {"systems": {}, "jax": jax.__version__, "rss_start_mib": rss_now_mib()}
    mem_cap = job["mem_cap_gib"] * 2**30
    time_cap = job["time_cap_s"]
    f = jax.jit(lambda p, g: apply_fn(p, g, forces=True, stress=False))
    fs = jax.jit(lambda p, g: apply_fn(p, g, forces=True, stress=True))
    prev = None
    for name in job["systems"]:
        g_np = graph_of(name, cfg.r_max)
        counts = graph_counts(g_np)
        if prev is not None and prev["ms"] / prev["atoms"] * counts["atoms"] > 1e3 * time_cap:
            out["systems"][name] = {**counts, "skipped": f"predicted time > {time_cap} s"}
            continue
        g = jax.device_put(g_np)
        t0 = time.perf_counter()
        compiled = f.lower(params, g).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        mem_bytes = None
        if mem is not None:
            mem_bytes = int(
                mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            )
        if mem_bytes is not None and mem_bytes > mem_cap:
            out["systems"][name] = {
                **counts,
                "skipped": f"needs {mem_bytes / 2**30:.1f} GiB > cap",
            }
            continue
        t0 = time.perf_counter()
        res = jax.block_until_ready(compiled(params, g))
        first_s = time.perf_counter() - t0
        timing = time_calls(
            lambda compiled=compiled, g=g: jax.block_until_ready(compiled(params, g)),
            job["min_time"],
            job["max_repeats"],
        )
        nm = np.asarray(g_np.node_mask)
        row = {
            **counts,
            **timing,
            "compile_s": compile_s,
            "first_call_s": first_s,
            "xla_memory_mib": None if mem_bytes is None else mem_bytes / 2**20,
            "rss_peak_mib": rss_peak_mib(),
            "check": energy_check(
                float(np.sum(np.asarray(res["energy"]))), np.asarray(res["forces"])[nm][:8]
            ),
        }
        if job.get("stress") and name in job["stress"]:
            cs = fs.lower(params, g).compile()
            jax.block_until_ready(cs(params, g))
            row["with_stress_ms"] = time_calls(
                lambda cs=cs, g=g: jax.block_until_ready(cs(params, g)),
                job["min_time"],
                job["max_repeats"],
            )["ms"]
        out["systems"][name] = row
        prev = row
        print(f"ours {name}: {row['ms']:.1f} ms", file=sys.stderr, flush=True)
    if job.get("train"):
        out["train_step"] = ours_train_step(cfg, params, apply_fn, job)
    if job.get("md"):
        try:
            out["md_step"] = ours_md_step(cfg, params, job)
        except Exception as e:  # report, do not lose the other numbers
            out["md_step"] = {"error": f"{type(e).__name__}: {e}"}
    out["rss_peak_mib"] = rss_peak_mib()
    return out


def ours_train_step(cfg, params, apply_fn, job: dict) -> dict:
    import jax

    from allegro_jax.data.padding import budget_of, build_graph
    from allegro_jax.train.loss import Batch, make_labels
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    structs = aspirin_structures(job["train_batch"], labels=True)
    g = build_graph(structs, TYPE_NAMES, cfg.r_max)
    batch = jax.device_put(Batch(g, make_labels(structs, budget_of(g))))
    tx = make_optimizer(1e-3)
    state = create_train_state(params, tx, 1e-3, jax.random.PRNGKey(1))
    step = make_train_step(apply_fn, tx, {"total_energy": 1.0, "forces": 1.0})
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    holder = [state]

    def one():
        s, m = compiled(holder[0], batch)
        jax.block_until_ready(m)
        holder[0] = s

    one()
    timing = time_calls(one, job["min_time"], job["max_repeats"] * 3, min_repeats=5)
    return {
        **graph_counts(g),
        **timing,
        "compile_s": compile_s,
        "xla_memory_mib": None
        if mem is None
        else (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
        / 2**20,
        "includes": "loss (per-atom energy MSE + force MSE), grad, Adam, EMA, metrics",
    }


def ours_md_step(cfg, params, job: dict) -> dict:
    import jax

    from allegro_jax.md.integrate import make_simulation

    structs = water_structures()
    atoms_species = np.array([TYPE_NAMES.index(s) for s in ("H", "O")])
    s = structs[0]
    species = np.where(s.numbers == 1, atoms_species[0], atoms_species[1])
    n_steps = job["md_steps"]
    init_fn, apply_fn = make_simulation(
        cfg,
        params,
        species,
        cell=np.asarray(s.cell),
        timestep_fs=0.5,
        temperature_K=300.0,
        skin=0.5,
        log_every=10,
        logs_per_chunk=max(1, n_steps // 10),
        log_pressure=False,
    )
    state = init_fn(jax.random.PRNGKey(1), s.positions)
    t0 = time.perf_counter()
    state, _ = apply_fn(state, n_steps)
    jax.block_until_ready(state.sim.position)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, log = apply_fn(state, n_steps)
    jax.block_until_ready(state.sim.position)
    dt = time.perf_counter() - t0
    return {
        "system": "water 192",
        "ensemble": "nve",
        "timestep_fs": 0.5,
        "steps": n_steps,
        "ms_per_step": 1e3 * dt / n_steps,
        "first_chunk_s": first,
        "neighbor_rebuilds": int(np.sum(np.asarray(log.n_rebuilds))),
        "includes": "jax-md NVE step with on-demand neighbour-list rebuild, jitted chunks",
    }


def worker_ref(job: dict) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    mode = job["mode"]
    out: dict = {"systems": {}, "torch": torch.__version__, "rss_start_mib": rss_now_mib()}
    import allegro
    import nequip

    out["nequip"] = nequip.__version__
    out["allegro"] = getattr(allegro, "__version__", "0.8.3")
    if mode == "compile-train":
        out["train_step"] = ref_train_step(job, compile_mode="compile")
        out["rss_peak_mib"] = rss_peak_mib()
        return out
    if mode == "eager":
        model = reference_model(job["spec"])
        model.eval()

        def call(data):
            return model(dict(data))

    else:
        from nequip.model.inference_models import load_compiled_model

        model, _ = load_compiled_model(job["pt2_path"], "cpu")

        def call(data):
            return model(dict(data))

    mem_cap_mib = job["mem_cap_gib"] * 1024
    time_cap = job["time_cap_s"]
    prev = None
    base_rss = rss_now_mib()
    for name in job["systems"]:
        g = graph_of(name, job["spec"]["r_max"])
        counts = graph_counts(g)
        if prev is not None:
            scale = counts["atoms"] / prev["atoms"]
            if prev["ms"] * scale > 1e3 * time_cap:
                out["systems"][name] = {**counts, "skipped": f"predicted time > {time_cap} s"}
                continue
            grown = max(prev["rss_peak_mib"] - base_rss, 0.0) * scale
            if prev["atoms"] >= 1000 and base_rss + grown > mem_cap_mib:
                out["systems"][name] = {**counts, "skipped": "predicted memory > cap"}
                continue
        data = nequip_batch(g, single_frame=(mode == "aot"))
        t0 = time.perf_counter()
        res = call(data)
        first_s = time.perf_counter() - t0
        timing = time_calls(lambda data=data: call(data), job["min_time"], job["max_repeats"])
        row = {
            **counts,
            **timing,
            "first_call_s": first_s,
            "rss_peak_mib": rss_peak_mib(),
            "check": energy_check(
                float(res["total_energy"].detach().sum()),
                res["forces"].detach().numpy()[:8],
            ),
        }
        out["systems"][name] = row
        prev = row
        print(f"ref {mode} {name}: {row['ms']:.1f} ms", file=sys.stderr, flush=True)
    if mode == "eager" and job.get("train"):
        del model
        out["train_step"] = ref_train_step(job)
    out["rss_peak_mib"] = rss_peak_mib()
    return out


def ref_train_step(job: dict, compile_mode: str | None = None) -> dict:
    """Reference training step: forces with create_graph, our loss, backward, Adam."""
    import torch

    from allegro_jax.data.padding import build_graph

    structs = aspirin_structures(job["train_batch"], labels=True)
    g = build_graph(structs, TYPE_NAMES, job["spec"]["r_max"])
    data = nequip_batch(g)
    n_graphs = len(structs)
    e_ref = torch.tensor([s.energy for s in structs], dtype=torch.float32)
    f_ref = torch.tensor(np.concatenate([s.forces for s in structs]), dtype=torch.float32)
    n_atoms = data["num_atoms"].to(torch.float32)
    model = reference_model(job["spec"], compile_mode=compile_mode)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def one():
        out = model(dict(data))
        e = out["total_energy"].reshape(n_graphs)
        loss = torch.mean(((e - e_ref) / n_atoms) ** 2) + torch.mean((out["forces"] - f_ref) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    loss = one()
    first_s = time.perf_counter() - t0
    n_grad = sum(
        int(p.grad is not None and bool(torch.any(p.grad != 0))) for p in model.parameters()
    )
    timing = time_calls(one, job["min_time"], job["max_repeats"] * 3, min_repeats=5)
    return {
        **graph_counts(g),
        **timing,
        "first_call_s": first_s,
        "loss": float(loss),
        "params_with_grad": n_grad,
        "rss_peak_mib": rss_peak_mib(),
        "includes": "forward with create_graph, loss (per-atom energy MSE + force MSE), "
        "backward, Adam (no EMA)",
    }


WORKERS = {"prepare": worker_prepare, "aot": worker_aot, "ours": worker_ours, "ref": worker_ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("worker", choices=sorted(WORKERS))
    ap.add_argument("--job", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    job = json.loads(Path(args.job).read_text())
    t0 = time.perf_counter()
    result = WORKERS[args.worker](job)
    result["worker_wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
