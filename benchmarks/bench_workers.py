"""Measurement workers of ``benchmarks/run.py``, one subprocess per system.

Each worker reads a JSON job description (``--job``) and writes a JSON result (``--out``):

* ``prepare``: build the reference model (nequip-allegro, fixed seed), convert it with
  ``from_nequip`` and pickle ``(config, params)`` for ours; initialise and pickle the
  InstaDeep ``mlip`` peers (MACE, NequIP; seed 0) and count their parameters;
* ``aot``: AOT-Inductor-compile the same reference model (``nequip-compile``'s ``ase``
  target, one thread, as ``reference-howto.md`` prescribes);
* ``compare``: ONE system, every side in this one process (ours with and without the
  virial, the reference eager, the reference AOT at 1 and at 2 torch threads, the peers),
  all on the same edges, calls interleaved round by round (``interleave``);
* ``train``: the training step (aspirin batch 5, energy + force loss), ours and the
  reference (eager; ``torch.compile`` on request) interleaved in one process;
* ``md``: jax-md NVE on a stable system (diamond Si at 300 K with the trained Si model of
  ``benchmarks/models/si_lmax1``): steps/s, neighbour-list rebuilds, temperatures.

torch and XLA share the process: ``OMP_WAIT_POLICY=PASSIVE`` (set by ``run.py``) keeps
torch's OpenMP threads from spinning between its calls, and each side's median is also
measured back to back (``solo_ms``) so that any interference shows up in the results.
The reference model is rebuilt from its seed (same weights as ours; energies compared).
Graphs (edges, cell shifts) come from ``build_graph``; every side gets the same edges.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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


def si_atoms(n_rep: int, rattle: float = 0.05):
    import ase.build

    si = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat((n_rep,) * 3)
    si.rattle(rattle, seed=0)
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
    out = {"n_params": n_params, "peers": {}}
    for name, path in job.get("peer_params_path", {}).items():
        out["peers"][name] = prepare_peer(name, job["spec"], path)
    return out


def prepare_peer(name: str, spec: dict, path: str) -> dict:
    """Random parameters (seed 0) of an ``mlip`` peer, pickled; its parameter count."""
    import jax
    from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init

    predictor = mlip_predictor(name, spec)
    t0 = time.perf_counter()
    params = jax.jit(predictor.init)(jax.random.key(0), get_dummy_graph_for_model_init())
    params = jax.device_get(params)
    with open(path, "wb") as f:
        pickle.dump(params, f)
    return {
        "n_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "init_s": time.perf_counter() - t0,
        "mlip": importlib.metadata.version("mlip"),
        **PEERS[name],
    }


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


# ---------------------------------------------------------------------------------------
# the sides of a comparison: each is a zero-argument call on one prepared input
# ---------------------------------------------------------------------------------------


def ours_side(params_path: str, g_np, stress: bool) -> dict:
    """allegro-jax energy+forces(+virial), jitted and compiled ahead for this graph; large
    graphs block-wise, by the rule the ASE calculator, LAMMPS and model files use
    (``ChunkPlanner``: on a CPU, when the whole graph's temporaries would exceed 2 GiB)."""
    import jax

    from allegro_jax import make_model
    from allegro_jax.nn.model import ChunkPlanner
    from allegro_jax.nn.xla_options import compiler_options

    with open(params_path, "rb") as f:
        cfg, params = pickle.load(f)
    _, apply_fn = make_model(cfg)
    params = jax.device_put(params)
    g = jax.device_put(g_np)
    chunks = ChunkPlanner(config=cfg)(g_np)
    fn = jax.jit(
        lambda p, g: apply_fn(p, g, forces=True, stress=stress, chunks=chunks),
        compiler_options=compiler_options(),  # what the ASE calculator and load_model use
    )
    t0 = time.perf_counter()
    compiled = fn.lower(params, g).compile()
    compile_s = time.perf_counter() - t0
    nm = np.asarray(g_np.node_mask)

    def call():
        return jax.block_until_ready(compiled(params, g))

    def check(res):
        return energy_check(
            float(np.sum(np.asarray(res["energy"]))), np.asarray(res["forces"])[nm][:8]
        )

    return {
        "call": call,
        "check": check,
        "info": {"compile_s": compile_s, "xla_memory_mib": xla_memory_mib(compiled)},
    }


def ref_side(job: dict, g_np, mode: str, threads: int) -> dict:
    """nequip-allegro eager or AOT Inductor (``ase`` target) at ``threads`` torch threads.

    nequip always computes the virial in its force call.
    """
    import torch

    if mode == "eager":
        model = reference_model(job["spec"])
        model.eval()
    else:
        from nequip.model.inference_models import load_compiled_model

        model, _ = load_compiled_model(job["pt2_path"], "cpu")
    data = nequip_batch(g_np, single_frame=(mode == "aot"))

    def call():
        torch.set_num_threads(threads)
        return model(dict(data))

    def check(res):
        return energy_check(
            float(res["total_energy"].detach().sum()), res["forces"].detach().numpy()[:8]
        )

    return {"call": call, "check": check, "info": {"threads": threads}}


def peer_side(job: dict, name: str, g_np) -> dict:
    """InstaDeep ``mlip`` (MACE or NequIP), energy+forces+stress, jitted, same edges."""
    import jax

    with open(job["peer_params_path"][name], "rb") as f:
        params = pickle.load(f)
    predictor = mlip_predictor(name, job["spec"])
    graph = mlip_graph(g_np)
    fn = jax.jit(predictor.apply)
    t0 = time.perf_counter()
    compiled = fn.lower(params, graph).compile()
    compile_s = time.perf_counter() - t0
    n_real = int(np.sum(np.asarray(g_np.node_mask)))

    def call():
        return jax.block_until_ready(compiled(params, graph))

    def check(res):
        return energy_check(
            float(np.sum(np.asarray(res.globals.energy))),
            np.asarray(res.nodes.forces)[:n_real][:8],
        )

    return {
        "call": call,
        "check": check,
        "info": {"compile_s": compile_s, "xla_memory_mib": xla_memory_mib(compiled)},
    }


def make_side(job: dict, side: str, g_np) -> dict:
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    if side == "ours":
        return ours_side(job["params_path"], g_np, stress=True)
    if side == "ours_nostress":
        return ours_side(job["params_path"], g_np, stress=False)
    if side == "ref_eager":
        return ref_side(job, g_np, "eager", threads)
    if side.startswith("ref_aot_t"):
        return ref_side(job, g_np, "aot", int(side.removeprefix("ref_aot_t")))
    if side in PEERS:
        return peer_side(job, side, g_np)
    raise ValueError(f"unknown side {side!r}")


def xla_memory_mib(compiled) -> float | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return total / 2**20


# ---------------------------------------------------------------------------------------
# InstaDeep mlip peers
# ---------------------------------------------------------------------------------------

# Sizes chosen for parameter counts close to the headline Allegro model (62,464 at l_max 1,
# S 64, C 32): MACE 57,904, NequIP 61,476 (counted in `prepare`); both l_max 1, 2 layers,
# 8 Bessels, polynomial envelope, r_max and avg_num_neighbors of the Allegro model.
PEERS = {
    "mlip_mace": {
        "model": "mace",
        "config": {"num_layers": 2, "num_channels": 32, "l_max": 1, "correlation": 3},
    },
    "mlip_nequip": {
        "model": "nequip",
        "config": {"num_layers": 2, "l_max": 1, "target_irreps": "40x0e+40x0o+20x1o+20x1e"},
    },
}
ATOMIC_NUMBERS = {"H": 1, "C": 6, "O": 8, "Si": 14}


def mlip_predictor(name: str, spec: dict):
    """The flax module of a peer: network + conservative forces/stress head."""
    from mlip.data import DatasetInfo
    from mlip.models import Mace, Nequip
    from mlip.models.predictors import ConservativePredictor
    from mlip.models.predictors.energy_heads import standard_energy_computation_head
    from mlip.typing.properties import Properties

    info = DatasetInfo(
        atomic_energies_map={ATOMIC_NUMBERS[t]: 0.0 for t in TYPE_NAMES},
        graph_cutoff_angstrom=spec["r_max"],
        avg_num_neighbors=AVG_NUM_NEIGHBORS,
    )
    peer = PEERS[name]
    network_cls = {"mace": Mace, "nequip": Nequip}[peer["model"]]
    network = network_cls(network_cls.Config(**peer["config"]), info)
    return ConservativePredictor(
        mlip_network=network,
        required_properties=Properties(stress=True),
        energy_head=standard_energy_computation_head,
    )


def mlip_graph(g_np):
    """Our padded graph -> an ``mlip`` Graph with the same (real) edges, sender-sorted.

    mlip's senders/receivers and shifts are our centres/neighbours and image offsets
    (``r = pos[receiver] - pos[sender] + shift @ cell``, as ours). A batch of several
    frames gets mlip's trailing padding graph (one dummy node, no edges).
    """
    import jax.numpy as jnp
    from mlip.graph import EdgeOrdering, Graph, GraphEdges, GraphGlobals, GraphNodes

    nm, em = np.asarray(g_np.node_mask), np.asarray(g_np.edge_mask)
    n_graphs = int(np.sum(np.asarray(g_np.graph_mask)))
    numbers = np.array([ATOMIC_NUMBERS[TYPE_NAMES[s]] for s in np.asarray(g_np.species)[nm]])
    pos = np.asarray(g_np.positions, np.float32)[nm]
    center = np.asarray(g_np.edge_center)[em]
    order = np.argsort(center, kind="stable")
    center = center[order]
    neighbor = np.asarray(g_np.edge_neighbor)[em][order]
    shift = np.asarray(g_np.edge_shift, np.float32)[em][order]
    cell = np.asarray(g_np.cell, np.float32)[:n_graphs]
    n_node = np.asarray(g_np.n_node)[:n_graphs]
    n_edge = np.bincount(np.asarray(g_np.node_graph)[nm][center], minlength=n_graphs)
    if n_graphs > 1:
        numbers = np.append(numbers, 1)
        pos = np.concatenate([pos, np.zeros((1, 3), np.float32)])
        cell = np.concatenate([cell, np.zeros((1, 3, 3), np.float32)])
        n_node, n_edge = np.append(n_node, 1), np.append(n_edge, 0)
    return Graph(
        nodes=GraphNodes(atomic_numbers=jnp.asarray(numbers), positions=jnp.asarray(pos)),
        edges=GraphEdges(shifts=jnp.asarray(shift)),
        globals=GraphGlobals(cell=jnp.asarray(cell), weight=jnp.ones(len(n_node), jnp.float32)),
        n_node=jnp.asarray(n_node),
        n_edge=jnp.asarray(n_edge),
        senders=jnp.asarray(center, jnp.int32),
        receivers=jnp.asarray(neighbor, jnp.int32),
        ordering=EdgeOrdering.SENDER,
    )


# ---------------------------------------------------------------------------------------
# interleaved timing
# ---------------------------------------------------------------------------------------


def interleave(calls: dict, job: dict) -> dict:
    """Time ``calls`` (name -> zero-argument call, each already warmed up) call by call.

    First ``solo_calls`` back-to-back calls of each (to see whether the frameworks slow
    each other down when interleaved), then rounds in which every side is called once,
    the order rotated by one each round (A B C, B C A, C A B, ...), so that no side
    always follows the same one. Rounds: enough for ``budget_s`` at the solo speed,
    clamped to [min_rounds, max_rounds].
    """
    names = list(calls)
    solo = {}
    for n in names:
        ts = []
        for _ in range(job.get("solo_calls", 3)):
            t0 = time.perf_counter()
            calls[n]()
            ts.append(time.perf_counter() - t0)
        solo[n] = ts
    round_s = sum(float(np.median(ts)) for ts in solo.values())
    n_rounds = int(job["budget_s"] / max(round_s, 1e-6))
    n_rounds = max(job["min_rounds"], min(job["max_rounds"], n_rounds))
    times: dict = {n: [] for n in names}
    faults: dict = {n: [] for n in names}  # minor page faults per call (this process)
    for r in range(n_rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - t0)
            faults[n].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    out = {}
    for n in names:
        ts = np.asarray(times[n])
        out[n] = {
            "ms": 1e3 * float(np.median(ts)),
            "ms_min": 1e3 * float(np.min(ts)),
            "ms_all": [round(1e3 * t, 3) for t in ts],
            "solo_ms": 1e3 * float(np.median(solo[n])),
            "page_faults_median": float(np.median(faults[n])),
            "page_faults_all": faults[n],
        }
    return {"rounds": n_rounds, "sides": out}


def worker_compare(job: dict) -> dict:
    """One system, every side in this process, calls interleaved (``interleave``)."""
    import jax
    import torch

    import allegro_jax

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    load_start = os.getloadavg()
    name = job["system"]
    g_np = graph_of(name, job["spec"]["r_max"])
    out: dict = {"system": name, **graph_counts(g_np), "jax": jax.__version__}
    out.update(versions_torch())
    calls, checks, info = {}, {}, {}
    for side in job["sides"]:
        s = make_side(job, side, g_np)
        t0 = time.perf_counter()
        res = s["call"]()
        info[side] = {**s["info"], "first_call_s": time.perf_counter() - t0}
        checks[side] = s["check"](res)
        calls[side] = s["call"]
        print(f"{name}: {side} ready", file=sys.stderr, flush=True)
    out.update(interleave(calls, job))
    for side in job["sides"]:
        out["sides"][side].update(info[side])
    out["malloc_tuning"] = allegro_jax._malloc.malloc_tuning()
    out["checks"] = checks
    out["load_avg_start"] = [round(x, 2) for x in load_start]
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["rss_peak_mib"] = rss_peak_mib()
    return out


def versions_torch() -> dict:
    import allegro
    import nequip
    import torch

    return {
        "torch": torch.__version__,
        "nequip": nequip.__version__,
        "allegro": getattr(allegro, "__version__", "0.8.3"),
    }


# ---------------------------------------------------------------------------------------
# training step, interleaved
# ---------------------------------------------------------------------------------------


def ours_train_side(job: dict) -> dict:
    import jax

    from allegro_jax import make_model
    from allegro_jax.data.padding import budget_of, build_graph
    from allegro_jax.nn.xla_options import compiler_options
    from allegro_jax.train.loss import Batch, make_labels
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    with open(job["params_path"], "rb") as f:
        cfg, params = pickle.load(f)
    _, apply_fn = make_model(cfg)
    structs = aspirin_structures(job["train_batch"], labels=True)
    g = build_graph(structs, TYPE_NAMES, cfg.r_max)
    batch = jax.device_put(Batch(g, make_labels(structs, budget_of(g))))
    tx = make_optimizer(1e-3)
    state = create_train_state(jax.device_put(params), tx, 1e-3, jax.random.PRNGKey(1))
    step = make_train_step(
        apply_fn,
        tx,
        {"total_energy": 1.0, "forces": 1.0},
        compiler_options=compiler_options(),  # as `allegro-jax train`
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():
        s, m = compiled(holder[0], batch)
        jax.block_until_ready(m)
        holder[0] = s
        return m

    return {
        "call": call,
        "info": {
            **graph_counts(g),
            "compile_s": compile_s,
            "xla_memory_mib": xla_memory_mib(compiled),
            "includes": "loss (per-atom energy MSE + force MSE), grad, Adam, EMA, metrics",
        },
    }


def ref_train_side(job: dict, compile_mode: str | None = None) -> dict:
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
    threads = int(os.environ.get("BENCH_THREADS", "2"))

    def call():
        torch.set_num_threads(threads)
        out = model(dict(data))
        e = out["total_energy"].reshape(n_graphs)
        loss = torch.mean(((e - e_ref) / n_atoms) ** 2) + torch.mean((out["forces"] - f_ref) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return {
        "call": call,
        "info": {
            "includes": "forward with create_graph, loss (per-atom energy MSE + force MSE), "
            "backward, Adam (no EMA)"
        },
    }


def worker_train(job: dict) -> dict:
    """Training step, aspirin batch ``train_batch``: ours and each reference side in turn,
    interleaved in pairs (ours A ours A ..., then ours B ours B ...).

    Pairs, not one rotation of every side: the reference's ``torch.compile`` training step
    takes ~6 s per call (against ~0.1 s eager), and in one rotation it slowed the call
    after it by 1.3-1.5x (ours 15.0 ms back to back, 19-30 ms after it; 2026-12-06).
    Each pair gives its own ratio, from calls interleaved in the same rounds; the headline
    uses the pair of the fastest reference side."""
    import jax
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    load_start = os.getloadavg()
    out: dict = {"jax": jax.__version__, **versions_torch()}
    calls, info = {}, {}
    for side in job["sides"]:
        if side == "ours":
            s = ours_train_side(job)
        elif side == "ref_eager":
            s = ref_train_side(job)
        elif side == "ref_compile":
            s = ref_train_side(job, compile_mode="compile")
        else:
            raise ValueError(f"unknown training side {side!r}")
        t0 = time.perf_counter()
        s["call"]()
        info[side] = {**s["info"], "first_call_s": time.perf_counter() - t0}
        calls[side] = s["call"]
        print(f"train: {side} ready", file=sys.stderr, flush=True)
    refs = [s for s in job["sides"] if s != "ours"]
    out["pairs"] = {}
    for ref in refs:
        res = interleave({"ours": calls["ours"], ref: calls[ref]}, job)
        res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        out["pairs"][ref] = res
    first = out["pairs"][refs[0]]
    out["rounds"] = {ref: r["rounds"] for ref, r in out["pairs"].items()}
    out["sides"] = {"ours": dict(first["sides"]["ours"])}
    out["sides"]["ours"]["ms_by_pair"] = {
        ref: r["sides"]["ours"]["ms"] for ref, r in out["pairs"].items()
    }
    for ref, r in out["pairs"].items():
        out["sides"][ref] = r["sides"][ref]
    for side in job["sides"]:
        out["sides"][side].update(info[side])
    out["load_avg_start"] = [round(x, 2) for x in load_start]
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


# ---------------------------------------------------------------------------------------
# MD on a stable system
# ---------------------------------------------------------------------------------------

MD_MODEL = Path(__file__).resolve().parent / "models" / "si_lmax1"


def load_si_model(dtype: str = "float32"):
    """The trained Si model of ``benchmarks/models/si_lmax1`` as ``(config, params)``, in
    ``dtype`` (float64 needs ``jax_enable_x64``)."""
    import dataclasses

    import jax

    from allegro_jax.io.model import load_model

    cfg, params, _ = load_model(MD_MODEL)
    if dtype != cfg.model_dtype:
        cfg = dataclasses.replace(cfg, model_dtype=dtype)
        params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
    return cfg, params


def md_benchmark(
    cfg,
    params,
    n_rep: int,
    steps: int,
    *,
    timestep_fs: float = 1.0,
    temperature_k: float = 300.0,
    skin: float = 0.5,
    chunk: int = 100,
    seed: int = 0,
) -> dict:
    """NVE MD of diamond Si (``n_rep``³ cubic cells, 0.01 Å rattle, Maxwell-Boltzmann
    velocities at ``temperature_k``) with a Si model (the trained one: near a minimum):
    steps/s over ``steps`` steps after a warm-up chunk (compilation), neighbour-list
    rebuilds per 100 steps, maximum temperature."""
    import jax

    from allegro_jax.md.integrate import make_simulation

    atoms = si_atoms(n_rep, rattle=0.01)
    species = np.full(len(atoms), cfg.type_names.index("Si"))
    init_fn, apply_fn = make_simulation(
        cfg,
        params,
        species,
        cell=np.asarray(atoms.cell),
        timestep_fs=timestep_fs,
        temperature_K=temperature_k,
        skin=skin,
        log_every=10,
        logs_per_chunk=max(1, chunk // 10),
        log_pressure=False,
    )
    state = init_fn(jax.random.PRNGKey(seed), atoms.positions)
    t0 = time.perf_counter()
    state, log = apply_fn(state, chunk)
    jax.block_until_ready(state.sim.position)
    first = time.perf_counter() - t0
    temps = list(np.asarray(log.temperature_K))
    rebuilds, done = 0, 0
    t0 = time.perf_counter()
    while done < steps:
        state, log = apply_fn(state, chunk)
        done += chunk
        rebuilds += int(np.sum(np.asarray(log.n_rebuilds)))
        temps += list(np.asarray(log.temperature_K))
    jax.block_until_ready(state.sim.position)
    dt = time.perf_counter() - t0
    return {
        "system": f"Si {len(atoms)}",
        "atoms": len(atoms),
        "model": "benchmarks/models/si_lmax1 (trained on mlearn Si, benchmarks/md_si.yaml)",
        "dtype": cfg.model_dtype,
        "ensemble": "nve",
        "timestep_fs": timestep_fs,
        "initial_temperature_K": temperature_k,
        "skin_A": skin,
        "steps": done,
        "steps_per_s": done / dt,
        "ms_per_step": 1e3 * dt / done,
        "atom_steps_per_s": len(atoms) * done / dt,
        "ns_per_day": done / dt * timestep_fs * 86400 * 1e-6,
        "first_chunk_s": first,
        "block_layout": None
        if state.chunks is None
        else {"atoms": state.chunks.atoms, "edges": state.chunks.edges},
        "rebuilds_per_100_steps": 100.0 * rebuilds / done,
        "max_temperature_K": float(np.max(temps)),
        "final_temperature_K": float(temps[-1]),
        "includes": "jax-md NVE step with on-demand neighbour-list rebuild, jitted chunks of "
        f"{chunk} steps, thermo row every 10 steps",
    }


def worker_md(job: dict) -> dict:
    import jax

    load_start = os.getloadavg()
    cfg, params = load_si_model()
    out = md_benchmark(cfg, params, job["md_n_rep"], job["md_steps"])
    out["jax"] = jax.__version__
    out["load_avg_start"] = [round(x, 2) for x in load_start]
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def worker_machine(job: dict) -> dict:
    """The CPU's description and a 2048^2 float32 product's GFLOP/s with the workers'
    threads (``experiments.runinfo``): the machine's speed beside the timings."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # where `experiments` is
    from experiments.runinfo import cpu_model, matmul_gflops

    return {"cpu": cpu_model(), "matmul_gflops": matmul_gflops()}


WORKERS = {
    "machine": worker_machine,
    "prepare": worker_prepare,
    "aot": worker_aot,
    "compare": worker_compare,
    "train": worker_train,
    "md": worker_md,
}


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
