"""A controlled toy benchmark of AMDM: a synthetic task with exact ground truth, a small
ecosystem of ComfyUI models trained on it, and a table comparing AMDM with the other ways
of combining those models. Run `python3 -m benchmarks.toy_ecosystem --help`."""
