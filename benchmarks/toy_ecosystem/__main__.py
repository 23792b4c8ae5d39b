"""python3 -m benchmarks.toy_ecosystem: the toy ecosystem study. Loads the shipped toy
ecosystems (or retrains them), runs the tables on the report ecosystems (three members, two
members, the noise-level experts' handoff), and writes the markdown tables,
benchmarks/results/toy_ecosystem.json, the frontier plots and the grid of samples
(docs/images/toy_*.png); with the default ecosystems and seeds it also rewrites
docs/toy_ecosystem.md's copy of the member tables and docs/handoff.md's copy of the handoff
tables and their reading (written from the JSON; --handoff-page rewrites only that, from the
committed JSON). Prints the markdown."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    from . import DEVELOPMENT_SEEDS, HANDOFF_SEEDS_PER_REQUEST, REPORT_SEEDS, SEEDS_PER_REQUEST

    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.toy_ecosystem", description=__doc__)
    parser.add_argument("--full", action="store_true",
                        help="the whole study: first choose the presets on the development ecosystems "
                             f"{', '.join(map(str, DEVELOPMENT_SEEDS))} by the rule in study.py (a candidate "
                             "grid), then report them")
    parser.add_argument("--handoff-page", action="store_true",
                        help="only rewrite docs/handoff.md's results from the committed "
                             "benchmarks/results/toy_ecosystem.json (no sampling; what the main job does after "
                             "writing the JSON)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the ecosystems on this machine (cached outside the repository, about 5 "
                             "minutes per ecosystem on one CPU core) instead of using the shipped weights")
    parser.add_argument("--retrain-experts", action="store_true",
                        help="keep the shipped bases and members, and train the noise-level experts from the "
                             "shipped bases on this machine (cached outside the repository, about 3 minutes per "
                             "ecosystem on one CPU core)")
    parser.add_argument("--ship-weights", action="store_true",
                        help="with --retrain or --retrain-experts: copy the trained weights into the repository")
    parser.add_argument("--ecosystems", type=int, nargs="+", default=list(REPORT_SEEDS),
                        help="report ecosystems (training seeds; default %(default)s)")
    parser.add_argument("--seeds", type=int, default=SEEDS_PER_REQUEST,
                        help="ComfyUI seeds per request (default %(default)s; 48 requests each)")
    parser.add_argument("--handoff-seeds", type=int, default=HANDOFF_SEEDS_PER_REQUEST,
                        help="ComfyUI seeds per request in the handoff table (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write every output into this directory (default: benchmarks/results/ and docs/images/)")
    # One thread by default: the toy's tensors are small, so a second thread saved only about
    # a fifth of a row's time on an idle 2-core machine, while two threads on a machine busy
    # with other work made rows over ten times slower (measured on this project's machine).
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default %(default)s; the tables do not depend on it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    if args.ship_weights and not (args.retrain or args.retrain_experts):
        parser.error("--ship-weights needs --retrain or --retrain-experts")
    if args.handoff_page and (args.full or args.retrain or args.retrain_experts or args.out is not None):
        parser.error("--handoff-page writes the page from the committed results alone: it takes no --full, "
                     "--retrain, --retrain-experts or --out")
    if args.retrain and args.retrain_experts:
        parser.error("--retrain already retrains the experts (from the retrained bases)")
    return args


def main() -> None:
    args = parse_args()
    # ComfyUI logs every model load at INFO on the root logger: show the study's own
    # messages and ComfyUI's warnings.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in (__package__, __name__):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    import torch

    from . import HANDOFF_SEEDS_PER_REQUEST, REPORT_SEEDS, SEEDS_PER_REQUEST

    torch.set_num_threads(args.threads)
    # Importing these sets up ComfyUI (found as documented in benchmarks/comfy_setup.py) and the pack.
    from . import run, study
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # one progress bar: the study's
    started = time.monotonic()
    config = study.StudyConfig(seeds=args.seeds, handoff_seeds=args.handoff_seeds)
    if args.handoff_page:
        print(run.write_handoff_page(run.RESULTS_DIR / "toy_ecosystem.json", config))
        return
    outcome = run.run_study(config, tuple(args.ecosystems), full=args.full, retrain=args.retrain,
                            retrain_experts=args.retrain_experts, ship=args.ship_weights)
    directories = {} if args.out is None else {"results_dir": args.out, "images_dir": args.out}
    paths = run.write_outputs(outcome, config, **directories)
    if (args.out is None and tuple(args.ecosystems) == REPORT_SEEDS
            and (args.seeds, args.handoff_seeds) == (SEEDS_PER_REQUEST, HANDOFF_SEEDS_PER_REQUEST)):
        paths["results page"] = run.replace_between(run.RESULTS_PAGE, run.RESULTS_BEGIN, run.RESULTS_END,
                                                    run.results_text(outcome, config, "###"))
        paths["handoff page"] = run.write_handoff_page(paths["json"], config)
    logging.getLogger(__name__).info("%.0f s; wrote %s", time.monotonic() - started,
                                     ", ".join(str(path) for path in paths.values()))
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
