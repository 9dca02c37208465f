"""QM9 (energies only)."""
