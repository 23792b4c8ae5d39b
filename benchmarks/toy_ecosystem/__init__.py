"""A controlled toy study of AMDM: a synthetic task with exact ground truth, several small
ecosystems of ComfyUI models trained on it, and tables comparing AMDM with the other ways
of combining those models. Run `python3 -m benchmarks.toy_ecosystem --help`."""

# Ecosystems are named by their training seed. AMDM's presets are chosen on the
# development ecosystems and reported on the report ecosystems.
DEVELOPMENT_SEEDS: tuple[int, ...] = (1,)
REPORT_SEEDS: tuple[int, ...] = (2, 3, 4)
# ComfyUI seeds per request: each a sampler call over all 48 requests.
SEEDS_PER_REQUEST = 2
# The handoff table's, fewer: every row but the base reaches joint accuracy 1.00 in every
# ecosystem (docs/handoff.md), and the main job must stay within 10 minutes on two cores.
HANDOFF_SEEDS_PER_REQUEST = 1
