"""python3 -m benchmarks.toy_ecosystem: train or load the toy ecosystem, run the table,
write it (markdown) and a grid of samples (PNG), and print the table."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.toy_ecosystem", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default %(default)s)")
    parser.add_argument("--requests", type=int, default=None,
                        help="number of requests (balanced subset of the 48; default 24, quick 12)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="ComfyUI seeds per request, each a sampler call over all requests (default 4, quick 2)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default %(default)s)")
    parser.add_argument("--cfg", type=float, default=None, help="CFG of every model (default: the benchmark's)")
    parser.add_argument("--target", default=None, help="member that finishes alone (default: the benchmark's)")
    parser.add_argument("--quick", action="store_true",
                        help="short training, fewer rows and images: a smoke run of a minute or two")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy 2-core machine two threads "
                             "measured many times slower than one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    # Importing these sets up ComfyUI (found as documented in comfy_setup) and the pack.
    from . import benchmark, models
    from .methods import SamplingSettings
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # one progress bar: the benchmark's
    defaults = benchmark.BenchmarkConfig()
    config = benchmark.BenchmarkConfig(
        requests=args.requests or (12 if args.quick else defaults.requests),
        seeds=args.seeds or (2 if args.quick else defaults.seeds),
        sampling=SamplingSettings(steps=args.steps, cfg=args.cfg if args.cfg is not None else defaults.sampling.cfg),
        target=args.target or defaults.target, quick=args.quick)
    started = time.monotonic()
    ecosystem = models.load_ecosystem(models.QUICK_TRAINING if args.quick else models.TrainingPlan())
    elapsed = {"training or loading": time.monotonic() - started}
    results = benchmark.run_benchmark(ecosystem, config)
    elapsed["sampling"] = time.monotonic() - started - elapsed["training or loading"]
    text, table_path, grid_path = benchmark.write_outputs(results, config, ecosystem, args.out, elapsed)
    logging.getLogger(__name__).info("wrote %s and %s", table_path, grid_path)
    print(text)


if __name__ == "__main__":
    main()
