"""Time the training step of a config: compile, per-step time, estimated epoch time.

Usage: python benchmarks/train_step.py allegro_jax/train/configs/rmd17_aspirin.yaml \
    --steps 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()

    from allegro_jax.nn.model import make_model
    from allegro_jax.train.config import load_config
    from allegro_jax.train.data import SplitData, epoch_permutation
    from allegro_jax.train.loop import complete_model_config, evaluate_split, load_splits
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_eval_step, make_train_step

    config = load_config(args.config)
    t0 = time.perf_counter()
    train_s, val_s = load_splits(config)
    model_config, _ = complete_model_config(config.model, train_s)
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    dtype = model_config.dtype
    train = SplitData(
        train_s, model_config.type_names, model_config.r_max, config.batch_size, dtype
    )
    val = SplitData(
        val_s, model_config.type_names, model_config.r_max, config.val_batch_size, dtype
    )
    t_nl = time.perf_counter() - t0
    init_fn, apply_fn = make_model(model_config)
    params = init_fn(jax.random.PRNGKey(0))
    tx = make_optimizer(config.learning_rate)
    state = create_train_state(params, tx, config.learning_rate, jax.random.PRNGKey(1))
    step = make_train_step(apply_fn, tx, config.loss_coeffs)
    eval_step = make_eval_step(apply_fn)
    batches = list(train.batches(epoch_permutation(len(train), 0, 0)))
    t0 = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    t_compile = time.perf_counter() - t0
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batches[1 + i % (len(batches) - 1)])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    evaluate_split(eval_step, state.ema_params, val)  # compile
    t0 = time.perf_counter()
    evaluate_split(eval_step, state.ema_params, val)
    t_val = time.perf_counter() - t0
    step_ms = 1e3 * float(np.median(times))
    result = {
        "config": args.config,
        "backend": jax.default_backend(),
        "n_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "n_train": len(train),
        "batch_size": config.batch_size,
        "budget": vars(train.budget),
        "statistics_s": round(t_stats, 2),
        "neighbor_lists_s": round(t_nl, 2),
        "compile_s": round(t_compile, 2),
        "step_ms_median": round(step_ms, 1),
        "step_ms_p90": round(1e3 * float(np.percentile(times, 90)), 1),
        "validation_s": round(t_val, 2),
        "epoch_s_estimate": round(train.num_batches * step_ms / 1e3 + t_val, 1),
        "train_step_compiles": step._cache_size(),
        "eval_step_compiles": eval_step._cache_size(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
