"""Cost of an ensemble of K models in ONE vmapped program against K separate models.

For a training config (default: ``allegro_jax/train/configs/rmd17_aspirin.yaml``, the
CPU-budget rMD17 aspirin model, batch 5) this times, back to back on the same batches:

* the train step of one model (what each of K separate runs executes) and the vmapped
  train step of K stacked models (:func:`allegro_jax.train.loop.train_and_evaluate` with
  ``ensemble_size: K``);
* inference (energy + forces) of one model and of the K-member ensemble
  (:func:`allegro_jax.nn.ensemble.make_ensemble_apply_fn`) on a batch;

and reports ``t_K / (K · t_1)``: below 1 the single program is cheaper than K separate runs
(also for the members run one after the other inside one program, ``jax.lax.map``)
(compile time is reported separately: K separate runs pay it K times). The machine load
(``os.getloadavg``) is recorded before and after, since shared boxes are noisy.

Usage (from the repository root: ``-m`` finds ``experiments.runinfo`` there)::

    python -m benchmarks.ensemble --members 4 --steps 10
    python -m benchmarks.ensemble --config allegro_jax/train/configs/test.yaml --steps 30
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
import numpy as np

from experiments.runinfo import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _time(fn, args_list, n: int) -> tuple[float, list[float]]:
    """Compile time (first call) and the per-call times of the next ``n`` calls."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args_list[0]))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(n):
        args = args_list[1 + i % (len(args_list) - 1)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", default=str(REPO / "allegro_jax/train/configs/rmd17_aspirin.yaml")
    )
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--json", default=str(HERE / "results" / "ensemble.json"))
    args = parser.parse_args()

    from allegro_jax.nn.ensemble import make_ensemble_apply_fn, stack_members
    from allegro_jax.nn.model import make_model
    from allegro_jax.train.config import load_config
    from allegro_jax.train.data import SplitData, epoch_permutation
    from allegro_jax.train.loop import complete_model_config, load_splits
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    load_before = os.getloadavg()
    config = load_config(args.config)
    train_s, _ = load_splits(config)
    model_config, _ = complete_model_config(config.model, train_s)
    dtype = model_config.dtype
    train = SplitData(
        train_s[: 10 * config.batch_size],
        model_config.type_names,
        model_config.r_max,
        config.batch_size,
        dtype,
    )
    batches = [jax.device_put(b) for b in train.batches(epoch_permutation(len(train), 0, 0))]
    init_fn, apply_fn = make_model(model_config)
    tx = make_optimizer(config.learning_rate)
    k = args.members
    states = [
        create_train_state(
            jax.jit(init_fn)(jax.random.PRNGKey(i)), tx, config.learning_rate, jax.random.PRNGKey(i)
        )
        for i in range(k)
    ]
    step = make_train_step(apply_fn, tx, config.loss_coeffs)
    ens_step = jax.jit(jax.vmap(step, in_axes=(0, None)))
    # the alternative inside one program: the members one after the other (lax.map)
    map_step = jax.jit(lambda s, b: jax.lax.map(lambda m: step(m, b), s))
    stacked = stack_members(states)

    # (the state is not threaded through: every call times the same work)
    results = {}
    c1, t1 = _time(step, [(states[0], b) for b in batches], args.steps)
    ck, tk = _time(ens_step, [(stacked, b) for b in batches], args.steps)
    cm, tm = _time(map_step, [(stacked, b) for b in batches], args.steps)
    results["train_step"] = (c1, t1, ck, tk, cm, tm)

    apply = jax.jit(apply_fn, static_argnames=("forces", "stress"))
    ens_apply = jax.jit(make_ensemble_apply_fn(apply_fn), static_argnames=("forces", "stress"))
    map_apply = jax.jit(lambda p, g: jax.lax.map(lambda m: apply_fn(m, g), p))
    params = states[0].params
    c1, t1 = _time(apply, [(params, b.graph) for b in batches], args.steps)
    ck, tk = _time(ens_apply, [(stacked.params, b.graph) for b in batches], args.steps)
    cm, tm = _time(map_apply, [(stacked.params, b.graph) for b in batches], args.steps)
    results["inference"] = (c1, t1, ck, tk, cm, tm)
    load_after = os.getloadavg()

    rows = {}
    for name, (c1, t1, ck, tk, cm, tm) in results.items():
        m1, mk, mm = float(np.median(t1)), float(np.median(tk)), float(np.median(tm))
        rows[name] = {
            "single_ms_median": 1e3 * m1,
            "single_ms_min": 1e3 * float(np.min(t1)),
            f"ensemble{k}_ms_median": 1e3 * mk,
            f"ensemble{k}_ms_min": 1e3 * float(np.min(tk)),
            f"separate{k}_ms_median": 1e3 * k * m1,
            "ratio_one_program_vs_separate": mk / (k * m1),
            "ratio_min": float(np.min(tk)) / (k * float(np.min(t1))),
            "single_compile_s": c1,
            f"ensemble{k}_compile_s": ck,
            f"lax_map{k}_ms_median": 1e3 * mm,
            "ratio_lax_map_vs_separate": mm / (k * m1),
            f"lax_map{k}_compile_s": cm,
        }
    print(
        f"K={k} members, batch {config.batch_size}, {Path(args.config).name}, "
        f"{jax.default_backend()}, load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(
        f"{'':12s} {'1 model ms':>11s} {f'{k} separate':>11s} {f'K={k} vmap':>11s} "
        f"{'ratio':>6s} {'lax.map':>9s} {'ratio':>6s} {'compile 1 / vmap / map s':>25s}"
    )
    for name, r in rows.items():
        print(
            f"{name:12s} {r['single_ms_median']:11.1f} {r[f'separate{k}_ms_median']:11.1f} "
            f"{r[f'ensemble{k}_ms_median']:11.1f} {r['ratio_one_program_vs_separate']:6.2f} "
            f"{r[f'lax_map{k}_ms_median']:9.1f} {r['ratio_lax_map_vs_separate']:6.2f} "
            f"{r['single_compile_s']:9.1f} / {r[f'ensemble{k}_compile_s']:5.1f} / "
            f"{r[f'lax_map{k}_compile_s']:5.1f}"
        )
    out = {
        "date": dt.date.today().isoformat(),
        "command": "python -m benchmarks.ensemble "
        + f"--config {os.path.relpath(args.config, REPO)} --members {k} --steps {args.steps}",
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores; shared box"
        if jax.default_backend() == "cpu"
        else jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "e3nn-jax")},
        "batch_size": config.batch_size,
        "members": k,
        "timed_calls": args.steps,
        "results": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
