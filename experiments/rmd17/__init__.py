"""rMD17 with the paper's protocol."""
