"""The water experiment's files (``runs/`` next to this package, the DFT frames in
``../shared/data/water``) and its MD protocol."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
DATA = HERE.parents[2] / "shared" / "data" / "water"
TRAIN_FILE, VALID_FILE = DATA / "water_train.extxyz", DATA / "water_valid.extxyz"
AUGMENTED_FILE = RUNS / "augmented" / "water_train_plus_stretched.extxyz"
DT_FS = 1.0
TEMPERATURE_K = 300.0
TAU_T_FS = 100.0
SKIN = 0.5
LOG_EVERY, LOGS_PER_CHUNK = 10, 10  # a thermo row every 10 fs, a frame every 100 fs
EQUILIBRATION_PS = 5.0
