"""MD runs made before their folders could be re-read here, kept in ``results.json``.

The 300 K runs of 2026-11-23/24 (model 3 with and without the O–H barrier, models 1 and 2)
are in the committed ``results.json`` with their full analysis; ``analyse --record`` carries
them over when their run folders are gone. The 360 K stability tests of 2026-11-24 were only
tabled in the README; :data:`STRESS_360K` holds them so that ``results.json`` lists every MD
run with the keys the stability table needs. ``intact_ps`` is the time of the first broken
frame, or the simulated length for a run that stayed intact.
"""

from __future__ import annotations

# model 3's runs at 300 K had the fixed O–H barrier exactly when their name says so
PAIR_TERMS_300K = {
    "md64_barrier_dt05": True,
    "md512_barrier_dt05": True,
    "md64": False,
    "md512": False,
    "md64_dt05": False,
    "model2/md64": False,
    "model2/md512": False,
    "md64_model1": False,
}
MODEL_300K = {
    "md64_barrier_dt05": "model 3 + O–H barrier (attempt B)",
    "md512_barrier_dt05": "model 3 + O–H barrier (attempt B)",
    "md64": "model 3",
    "md512": "model 3",
    "md64_dt05": "model 3",
    "model2/md64": "model 2",
    "model2/md512": "model 2",
    "md64_model1": "model 1",
}


def _stress(model, pair_terms, dt, simulated, first_break, note):
    return {
        "model": model,
        "molecules": 64,
        "pair_terms": pair_terms,
        "dt_fs": dt,
        "temperature_K": 360.0,
        "simulated_ps": simulated,
        "molecules_intact_until_ps": first_break,
        "intact_ps": simulated if first_break is None else first_break,
        "note": note,
        "recorded": "2026-11-24, README tables (run folders not kept)",
    }


STRESS_360K = {
    "stress360_model3": _stress("model 3", False, 1.0, 47.9, 32.9, "stopped by hand"),
    "stress360_s64_seed0": _stress(
        "wide (train_s64.yaml, 35 552 parameters)", False, 1.0, 24.9, 5.9, "T > 1000 K at 18.2 ps"
    ),
    "stress360_s64_seed1": _stress(
        "wide (train_s64.yaml, 35 552 parameters)", False, 1.0, 24.9, 0.5, "T > 1000 K at 13.7 ps"
    ),
    "attempts/A_morse/stress360_morse": _stress(
        "A: fixed Morse O–H + network", True, 1.0, 0.2, 0.2, "two O at 0.90 Å, T > 1000 K"
    ),
    "attempts/B_barrier/stress360": _stress(
        "B: model 3 + O–H barrier",
        True,
        1.0,
        3.3,
        0.8,
        "integration error across the barrier; stopped after a 7 eV jump at 3.3 ps",
    ),
    "attempts/E_synthetic_w50/stress360": _stress(
        "E: + synthetic stretched-bond frames",
        False,
        1.0,
        4.4,
        4.2,
        "two H at 0.90 Å; an H left at 4.4 ps",
    ),
    "attempts/B_barrier/stress360_dt05": _stress(
        "B: model 3 + O–H barrier", True, 0.5, 50.0, None, "max T 441 K"
    ),
    "attempts/B_barrier/stress360_model3_dt05": _stress(
        "model 3 (control of B)", False, 0.5, 50.0, 1.2, "max T 447 K"
    ),
}


def stability_keys(name: str, info: dict) -> dict:
    """The keys every ``runs`` entry carries (``molecules``, ``pair_terms``, ``dt_fs``,
    ``intact_ps``, ...) for a 300 K run recorded before run cards existed."""
    broke = info.get("molecules_intact_until_ps")
    return {
        "model": info.get("model", MODEL_300K.get(name)),
        "molecules": info.get("molecules", info.get("n_molecules")),
        "pair_terms": info.get("pair_terms", PAIR_TERMS_300K.get(name)),
        "dt_fs": info.get("dt_fs"),
        "temperature_K": info.get("temperature_K", 300.0),
        "intact_ps": info.get("intact_ps", info["simulated_ps"] if broke is None else broke),
    }
