"""Combine separately trained models into one ensemble model directory.

``allegro-jax ensemble --members A B C D --out E`` stacks the parameters of K single models
(run or model directories) on a leading member axis and writes an ensemble model
(:func:`allegro_jax.io.model.save_model` with ``ensemble_size=K``) that ``load_model``,
``allegro-jax md`` (dynamics on the members' mean, force spread logged) and ``evaluate``
take. Members may come from different runs or machines (e.g. one training seed each, which
costs K single trainings instead of one vmapped run); they must be the same model: equal
model configs (architecture, species, cutoff, normalisation statistics). A member that is
itself an ensemble, or differs, is refused with the member's path and the first field that
differs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from allegro_jax.io.model import (
    CONFIG_FILE,
    find_model_dir,
    load_model,
    read_ensemble_size,
    save_model,
)


class CombineError(ValueError):
    """Members that cannot be stacked into one ensemble (the message names the member)."""


def combine_models(members: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Stack the models at ``members`` into an ensemble model directory ``out``.

    Args:
        members: ≥ 2 run or model directories of single (non-ensemble) models with equal
            model configs.
        out: the ensemble's model directory (replaced atomically if it exists).

    Returns:
        The written directory.

    Raises:
        CombineError: fewer than two members, a member that is an ensemble, or model configs
            that differ (the message names the member and the first differing field).
        FileNotFoundError: a member path holds no model.
    """
    if len(members) < 2:
        raise CombineError(f"an ensemble needs at least 2 members, got {len(members)}")
    configs, params, sources, member_meta = [], [], [], []
    for path in members:
        model_dir = find_model_dir(path)
        if read_ensemble_size(model_dir) != 1:
            raise CombineError(f"{model_dir} is already an ensemble; give single models")
        config, p, _ = load_model(model_dir)
        configs.append(config)
        params.append(p)
        sources.append(str(path))
        doc = json.loads((model_dir / CONFIG_FILE).read_text())
        member_meta.append({"source": str(path), **doc.get("metadata", {})})
    first = configs[0].to_dict()
    for path, config in zip(sources[1:], configs[1:], strict=True):
        other = config.to_dict()
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise CombineError(
                    f"{path}: model config differs from {sources[0]} in {key!r} "
                    f"({other.get(key)!r} vs {first.get(key)!r}); members must be the same model"
                )
    treedef = jax.tree.structure(params[0])
    for path, p in zip(sources[1:], params[1:], strict=True):
        if jax.tree.structure(p) != treedef or any(
            np.shape(a) != np.shape(b)
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params[0]), strict=True)
        ):
            raise CombineError(f"{path}: parameters do not have the layout of {sources[0]}")
    return save_model(
        out,
        configs[0],
        # numpy keeps each leaf's dtype (float64 members without jax_enable_x64 too)
        jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *params),
        {"members": member_meta},
        ensemble_size=len(params),
    )


def add_ensemble_parser(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="stack separately trained models (same architecture, e.g. one seed each) into "
        "one ensemble model for md/evaluate",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--members", nargs="+", required=True, help="run or model directories, 2 or more"
    )
    p.add_argument("--out", required=True, help="ensemble model directory to write")
    p.set_defaults(func=_ensemble_main)


def _ensemble_main(args) -> int:
    try:
        out = combine_models(args.members, args.out)
    except (CombineError, FileNotFoundError) as err:
        print(f"ERROR (allegro-jax ensemble): {err}", file=sys.stderr)
        return 2
    print(f"wrote an ensemble of {len(args.members)} members to {out}")
    return 0
