"""Liquid water: training, NVT molecular dynamics, RDFs and diffusion."""
