"""Is it still water: minimum-image O–H vectors and distances, O–H bond lengths, and the
first frame of a trajectory whose molecules are not intact."""

from __future__ import annotations

import numpy as np


def from_oxygens(positions, h: int, is_o, cell) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-image vectors O→H from every O to the H atom ``h`` (``[n_O, 3]``), and their
    lengths."""
    from allegro_jax.md.analysis import minimum_image_vectors

    vec = minimum_image_vectors(positions[h] - positions[is_o], np.asarray(cell))
    return vec, np.linalg.norm(vec, axis=1)


def distances(frame, a: str, b: str) -> np.ndarray:
    """Minimum-image distances (Å) from every atom of element ``a`` to every atom of ``b``."""
    from allegro_jax.md.analysis import minimum_image_vectors

    s = np.array(frame.get_chemical_symbols())
    pa, pb = frame.positions[s == a], frame.positions[s == b]
    return np.linalg.norm(
        minimum_image_vectors(pb[None] - pa[:, None], np.array(frame.cell)), axis=-1
    )


def oh_bond_lengths(frames) -> dict:
    """Mean and spread (Å) of each H's distance to its nearest O, over all H of all frames."""
    d = np.concatenate([distances(f, "O", "H").min(axis=0) for f in frames])
    return {"mean_A": float(d.mean()), "std_A": float(d.std())}


# Intact water, judged against all 400 DFT frames: there every H has one O within 0.89–1.14 Å
# and no other O within 1.32 Å, no two O are closer than 2.35 Å, and no two H of different
# molecules closer than 1.63 Å. The thresholds sit well outside those ranges.
BOND_O_H, CONTACT_O_O, CONTACT_H_H = 1.25, 2.0, 1.2


def first_broken_frame(frames) -> int | None:
    """Index of the first frame that is not intact water, or ``None``.

    Intact: every O has exactly two H within ``BOND_O_H`` and every H one O; no two O within
    ``CONTACT_O_O``; no two H of different molecules within ``CONTACT_H_H``."""
    for k, f in enumerate(frames):
        d_oh = distances(f, "O", "H")
        close = d_oh < BOND_O_H
        if not (np.all(close.sum(1) == 2) and np.all(close.sum(0) == 1)):
            return k
        d_oo = distances(f, "O", "O")
        if np.any(d_oo[~np.eye(len(d_oo), dtype=bool)] < CONTACT_O_O):
            return k
        owner = d_oh.argmin(axis=0)
        d_hh = distances(f, "H", "H")
        if np.any(d_hh[owner[:, None] != owner[None, :]] < CONTACT_H_H):
            return k
    return None


def describe_break(frame) -> dict:
    """What is broken in a frame (the first that :func:`first_broken_frame` flags): each H
    without exactly one O within ``BOND_O_H`` with its two nearest O distances (Å) and
    those O's distance; each O–O contact below ``CONTACT_O_O``; each H–H contact of
    different molecules below ``CONTACT_H_H``."""
    d_oh = distances(frame, "O", "H")  # [n_O, n_H]
    d_oo = distances(frame, "O", "O")
    out: dict = {"h_off_bond": [], "o_o_contacts": [], "h_h_contacts": []}
    close = d_oh < BOND_O_H
    for h in np.flatnonzero(close.sum(0) != 1):
        o1, o2 = np.argsort(d_oh[:, h])[:2]
        out["h_off_bond"].append(
            {
                "h": int(h),
                "nearest_o_A": round(float(d_oh[o1, h]), 3),
                "second_o_A": round(float(d_oh[o2, h]), 3),
                "o_o_A": round(float(d_oo[o1, o2]), 3),
            }
        )
    iu = np.triu_indices(len(d_oo), 1)
    for i, j in zip(*iu, strict=True):
        if d_oo[i, j] < CONTACT_O_O:
            out["o_o_contacts"].append({"o": [int(i), int(j)], "A": round(float(d_oo[i, j]), 3)})
    owner = d_oh.argmin(axis=0)
    d_hh = distances(frame, "H", "H")
    for i, j in zip(*np.triu_indices(len(d_hh), 1), strict=True):
        if owner[i] != owner[j] and d_hh[i, j] < CONTACT_H_H:
            out["h_h_contacts"].append({"h": [int(i), int(j)], "A": round(float(d_hh[i, j]), 3)})
    return out


HEAL_PS = 0.5  # a broken stretch of frames that ends within this is a transient excursion


def broken_episodes(frames, heal_ps: float = HEAL_PS) -> list[dict]:
    """Stretches of consecutive broken frames (``info["time_fs"]`` set): each with its
    first and last broken time (ps), and whether the water was intact again within
    ``heal_ps`` (a transient excursion, e.g. an H briefly centred between two O) or not
    (a lasting defect: an H that stays off, fused molecules, or broken to the end)."""
    out: list[dict] = []
    for f in frames:
        t = f.info["time_fs"] / 1000
        if first_broken_frame([f]) is None:
            continue
        if out and out[-1]["_next"] and t <= out[-1]["_next"] + 1e-9:
            out[-1]["end_ps"] = t
        else:
            out.append({"start_ps": t, "end_ps": t})
        out[-1]["_next"] = t + _spacing(frames)
    times = [f.info["time_fs"] / 1000 for f in frames]
    for e in out:
        e.pop("_next")
        after = [t for t in times if t > e["end_ps"] + 1e-9]
        e["healed"] = bool(after) and bool(e["end_ps"] - e["start_ps"] < heal_ps)
        e["start_ps"], e["end_ps"] = round(float(e["start_ps"]), 4), round(float(e["end_ps"]), 4)
    return out


def _spacing(frames) -> float:
    return (frames[1].info["time_fs"] - frames[0].info["time_fs"]) / 1000 if len(frames) > 1 else 0
