"""The water report's figures: radial distribution functions against the DFT frames
(``rdf.png``) and the O mean-squared displacement with its Einstein fit (``msd.png``)."""

from __future__ import annotations

from pathlib import Path

from experiments.water.observables import MSD_FIT_PS


def plot_rdf(r, dft, md, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, pair in zip(axes, ("O-O", "O-H", "H-H"), strict=True):
        ax.plot(r, dft[pair], "k-", lw=2, label="DFT frames (400)")
        for label, g in md.items():
            ax.plot(r, g[pair], lw=1.2, label=label)
        ax.set_title(f"g(r) {pair}")
        ax.set_xlabel("r (Å)")
        ax.set_xlim(0.5, r[-1])
    axes[0].set_ylabel("g(r)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_msd(curves: dict, fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (t, msd) in curves.items():
        ax.plot(t, msd, label=label)
        slope, intercept = fits[label]
        window = (t >= MSD_FIT_PS[0]) & (t <= MSD_FIT_PS[1])
        ax.plot(t[window], slope * t[window] + intercept, "k--", lw=1)
    ax.axvspan(*MSD_FIT_PS, color="0.9", zorder=0, label="fit window")
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("O MSD (Å²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_committee(curves: dict, model: str, path: Path) -> None:
    """Largest per-atom force spread of the ensemble ``model`` along each run, with the
    run's first broken frame marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (t, smax, broken_ps) in curves.items():
        (line,) = ax.plot(t, smax, lw=0.8, label=name)
        if broken_ps is not None:
            ax.axvline(broken_ps, color=line.get_color(), ls="--", lw=1)
    ax.set_xlabel("time (ps); dashed: first broken frame")
    ax.set_ylabel("max over atoms of force std (eV/Å)")
    ax.set_yscale("log")
    ax.set_title(f"force spread of {model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
