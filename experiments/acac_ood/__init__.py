"""Acetylacetone: trained at 300 K, tested at 300 K and 600 K."""
