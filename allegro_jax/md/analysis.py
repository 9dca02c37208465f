"""Trajectory analysis in NumPy: radial distribution functions, unwrapping, MSD, diffusion.

Conventions: positions in Å as ``[n_frames, n_atoms, 3]``; an ASE-style cell (rows are the
lattice vectors, Å) as ``[3, 3]`` or one per frame ``[n_frames, 3, 3]``; times in ps.
"""

from __future__ import annotations

import numpy as np

# 1 Å²/ps = 1e-16 cm² / 1e-12 s
A2_PER_PS_TO_CM2_PER_S = 1e-4
_IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])


def _cells(cell: np.ndarray, n_frames: int) -> np.ndarray:
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape == (3, 3):
        return np.broadcast_to(cell, (n_frames, 3, 3))
    if cell.shape != (n_frames, 3, 3):
        raise ValueError(f"cell must be [3, 3] or [{n_frames}, 3, 3], got {cell.shape}")
    return cell


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of a cell (rows = lattice vectors): ``V / |a_j × a_k|``."""
    cell = np.asarray(cell, dtype=np.float64)
    vol = abs(np.linalg.det(cell))
    cross = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    return vol / np.linalg.norm(cross, axis=-1)


def minimum_image_vectors(delta: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Shortest periodic images of difference vectors ``[..., 3]`` in a (triclinic) cell.

    Fractional components are wrapped to ``[-0.5, 0.5)``; for an orthorhombic cell that is
    the minimum image, for a triclinic one the 27 neighbouring images of the wrapped vector
    are compared as well (exact whenever the answer is shorter than half the smallest
    perpendicular width).
    """
    cell = np.asarray(cell, dtype=np.float64)
    frac = delta @ np.linalg.inv(cell)
    frac -= np.round(frac)
    if np.allclose(cell - np.diag(np.diag(cell)), 0.0):
        return frac @ cell
    cand = (frac[..., None, :] + _IMAGES) @ cell  # [..., 27, 3]
    best = np.argmin(np.sum(cand**2, axis=-1), axis=-1)
    return np.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]


def rdf(
    positions: np.ndarray,
    cell: np.ndarray,
    select_a: np.ndarray,
    select_b: np.ndarray,
    edges: np.ndarray,
) -> np.ndarray:
    """Partial radial distribution function ``g_ab(r)`` averaged over frames.

    ``g_ab(r) = <n_ab(r)> / (ρ_pairs · 4π/3 (r₂³ − r₁³))`` with ``n_ab`` the number of ordered
    pairs (i in a, j in b, i ≠ j) in the shell and ``ρ_pairs = (N_a N_b − N_ab) / V``
    (``N_ab`` atoms in both selections), so an ideal gas gives 1 and ``g_OO`` is the usual
    one. Distances use the minimum image.

    Args:
        positions: ``[n_frames, n_atoms, 3]`` (or ``[n_atoms, 3]``), Å.
        cell: ``[3, 3]`` or ``[n_frames, 3, 3]`` (rows = lattice vectors).
        select_a: boolean mask ``[n_atoms]`` of the first species.
        select_b: boolean mask ``[n_atoms]`` of the second species.
        edges: ``[n_bins + 1]`` bin edges in Å; the last must not exceed half the smallest
            perpendicular width of the cell.

    Returns:
        ``[n_bins]`` g(r) at the bins.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    n_frames, n_atoms, _ = positions.shape
    a, b = np.asarray(select_a, bool), np.asarray(select_b, bool)
    if a.shape != (n_atoms,) or b.shape != (n_atoms,):
        raise ValueError(f"selections must be boolean masks of shape ({n_atoms},)")
    edges = np.asarray(edges, dtype=np.float64)
    cells = _cells(cell, n_frames)
    n_pairs = a.sum() * b.sum() - (a & b).sum()
    if n_pairs == 0:
        raise ValueError("the selections give no pairs")
    idx_a, idx_b = np.flatnonzero(a), np.flatnonzero(b)
    hist = np.zeros(len(edges) - 1)
    density = 0.0
    for pos, c in zip(positions, cells, strict=True):
        half = 0.5 * perpendicular_widths(c).min()
        if edges[-1] > half + 1e-9:
            raise ValueError(
                f"RDF range {edges[-1]} Å exceeds half the smallest cell width ({half:.3f} Å)"
            )
        vol = abs(np.linalg.det(c))
        for start in range(0, len(idx_a), 256):  # bounded memory
            ia = idx_a[start : start + 256]
            d = minimum_image_vectors(pos[idx_b][None, :, :] - pos[ia][:, None, :], c)
            r = np.linalg.norm(d, axis=-1)
            r = r[ia[:, None] != idx_b[None, :]]
            hist += np.histogram(r, bins=edges)[0]
        density += n_pairs / vol
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return hist / (density * shell)


def unwrap(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Continuous trajectories from wrapped positions ``[n_frames, n_atoms, 3]``.

    Adds the minimum-image displacement between consecutive frames, so an atom must move
    less than half the smallest cell width between frames.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cells = _cells(cell, len(positions))
    out = np.empty_like(positions)
    out[0] = positions[0]
    for t in range(1, len(positions)):
        step = minimum_image_vectors(positions[t] - positions[t - 1], cells[t])
        out[t] = out[t - 1] + step
    return out


def remove_center_of_mass_drift(unwrapped: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Subtract the centre-of-mass displacement ``R_cm(t) − R_cm(0)`` from every atom."""
    masses = np.asarray(masses, dtype=np.float64)
    com = np.einsum("tni,n->ti", unwrapped, masses) / masses.sum()
    return unwrapped - (com - com[0])[:, None, :]


def mean_squared_displacement(
    unwrapped: np.ndarray, max_lag: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MSD ``<|r_i(t₀ + τ) − r_i(t₀)|²>`` over atoms and all time origins t₀.

    Args:
        unwrapped: ``[n_frames, n_atoms, 3]`` continuous (unwrapped) positions.
        max_lag: largest lag in frames (default ``n_frames − 1``).

    Returns:
        ``(lags, msd)``: lags ``0..max_lag`` in frames and the MSD in Å².
    """
    x = np.asarray(unwrapped, dtype=np.float64)
    n = len(x)
    max_lag = n - 1 if max_lag is None else int(max_lag)
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag must be in [0, {n - 1}], got {max_lag}")
    lags = np.arange(max_lag + 1)
    msd = np.array([np.mean(np.sum((x[k:] - x[: n - k]) ** 2, axis=-1)) for k in lags])
    return lags, msd


def diffusion_coefficient(
    t_ps: np.ndarray, msd: np.ndarray, window_ps: tuple[float, float]
) -> tuple[float, float, float]:
    """Self-diffusion coefficient from the Einstein relation ``MSD = 6 D t`` (3D).

    Fits a line to the MSD over the lag-time window.

    Returns:
        ``(D in cm²/s, slope in Å²/ps, intercept in Å²)``.
    """
    t_ps, msd = np.asarray(t_ps), np.asarray(msd)
    sel = (t_ps >= window_ps[0]) & (t_ps <= window_ps[1])
    if sel.sum() < 2:
        raise ValueError(f"fewer than two MSD points in the window {window_ps} ps")
    slope, intercept = np.polyfit(t_ps[sel], msd[sel], 1)
    return float(slope / 6.0 * A2_PER_PS_TO_CM2_PER_S), float(slope), float(intercept)
