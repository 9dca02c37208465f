"""``allegro-jax train CONFIG.yaml`` and ``allegro-jax evaluate --model RUN_DIR --data FILE``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 2 bad config/data, 3 non-finite loss, 4 checkpoints, 5 directory busy."""
    from allegro_jax.io.runlock import RunLockedError
    from allegro_jax.train.checkpoint import CheckpointError
    from allegro_jax.train.config import DATA_DIR_ENV, load_config
    from allegro_jax.train.loop import NonFiniteLossError, train_and_evaluate

    if args.data_dir:  # what ${ALLEGRO_JAX_DATA} in the config's paths means
        os.environ[DATA_DIR_ENV] = args.data_dir
    try:
        config = load_config(args.config, parse_overrides(args.set))
    except (OSError, ValueError) as err:
        print(f"error: {_one_paragraph(err)}", file=sys.stderr)
        return 2
    workdir = args.workdir or config.workdir or str(Path("runs") / Path(args.config).stem)
    try:
        summary = train_and_evaluate(config, workdir)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    except RunLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 5
    # a missing or unreadable file, bad data (DataError names the file and the frame), a
    # resume with another ensemble_size, ...: expected errors, one paragraph, no traceback
    except (OSError, ValueError) as err:
        print(f"error: {_one_paragraph(err)}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "best_validation"}, indent=2))
    return 0


def _one_paragraph(err: BaseException) -> str:
    """The message of an expected error on one line (``OSError``: with its file name)."""
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err):
        text = f"{err}: {err.filename}"
    else:
        text = str(err)
    return " ".join(text.split())


def parse_overrides(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> ``{key: yaml-parsed value}`` (``--set max_wall_time=600``)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from allegro_jax.io.model import read_model_config
    from allegro_jax.train.evaluate import evaluate_model

    try:
        if read_model_config(args.model).model_dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)
        metrics = evaluate_model(
            args.model,
            args.data,
            batch_size=args.batch_size,
            group_by=args.group_by,
            predictions=args.predictions,
        )
    except (OSError, ValueError) as err:  # missing or bad files, bad data: no traceback
        print(f"error: {_one_paragraph(err)}", file=sys.stderr)
        return 2
    default = Path(args.model) / f"eval_{Path(args.data).stem}.json"
    out = Path(args.output) if args.output else default
    out.write_text(json.dumps(metrics, indent=2))
    for key, value in metrics.items():
        if key in ("skipped", "groups", "predictions"):
            continue
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    for value, group in metrics.get("groups", {}).items():
        errors = ", ".join(
            f"{k} {group[k]:.4f}"
            for k in ("energy_per_atom_mae_mev", "force_mae_mev_per_a", "stress_mae_mev_per_a3")
            if k in group
        )
        print(f"{args.group_by} {value}: {group['n_structures']} structures; {errors}")
    if metrics.get("skipped"):
        names = " and ".join(metrics["skipped"])
        print(f"not evaluated: {names} (no frame of {args.data} has them)")
    if metrics.get("predictions"):
        print(f"predictions for every structure written to {metrics['predictions']}")
    print(f"written to {out}")
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train CONFIG.yaml [--workdir DIR]``."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML config (resumes from the work directory's checkpoints)",
    )
    p.add_argument("config", help="YAML training config")
    p.add_argument(
        "--workdir", help="run directory (default: the config's `workdir`, else runs/<config name>)"
    )
    p.add_argument(
        "--data-dir",
        help="the data directory that ${ALLEGRO_JAX_DATA}/... paths (the packaged configs') "
        "resolve against (default: $ALLEGRO_JAX_DATA, else ../shared/data)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key (YAML value), e.g. --set max_wall_time=600; repeatable",
    )
    p.set_defaults(func=_train)
    return p


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``evaluate --model RUN_DIR --data FILE [--output JSON]``."""
    p = subparsers.add_parser(
        "evaluate",
        help="energy/force/stress MAE and RMSE of a trained model on a data file (for an "
        "ensemble: of the mean prediction, plus the force standard deviation)",
    )
    p.add_argument("--model", required=True, help="run directory or model directory")
    p.add_argument("--data", required=True, help="data file (rMD17 npz, extxyz, ...)")
    p.add_argument("--output", help="JSON file (default: <model>/eval_<data name>.json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--group-by",
        metavar="KEY",
        help="also give the errors for each value of this per-frame key (e.g. config_type)",
    )
    p.add_argument(
        "--predictions",
        metavar="FILE.extxyz",
        help="also write every structure with the model's predictions beside its labels "
        "(allegro_energy, allegro_forces, allegro_stress; per-frame errors "
        "allegro_energy_error_mev_per_atom and allegro_force_mae_mev_per_a; for an "
        "ensemble allegro_energy_std and allegro_forces_std)",
    )
    p.set_defaults(func=_evaluate)
    return p
