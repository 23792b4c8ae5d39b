"""What members cost at realistic size: distinct checkpoints, a LoRA clone, one checkpoint
with other prompts (batched), three members, against plain KSampler.

    python3 -m benchmarks.shared_checkpoints [--steps 20] [--window 8] [--repeats 2] [--device cuda]

SD1.5-architecture UNets (about 860M parameters, random weights) and a rank-32 LoRA on
every attention and feed-forward projection are generated once and cached under
${COMFYUI_AMDM_CACHE:-~/.cache/comfyui-amdm}/bench; they load through ComfyUI's own loaders
(load_diffusion_model_state_dict, load_lora_for_models). Each row runs in a process of
its own, so that its peak RSS is its own: the process loads what the row needs, runs one
step of everything to load and patch the models, then times plain KSampler and the AMDM
row at --steps steps on a 4x64x64 latent (512 px), alternately, --repeats times each, and
keeps each one's fastest run. The evaluation bound of a row is (S + (N-1)|W|) / S model
evaluations relative to plain sampling. With --device cuda the models run in fp16 on the
CUDA GPU ComfyUI chooses (its default memory management), and the table adds each row's
peak VRAM; absolute times are then meaningful.

Prints a markdown table; every number comes from this run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .comfy_setup import comfy_env, setup_comfy

ROWS = {
    "distinct": "AMDM, 2 members, distinct checkpoints",
    "lora": "AMDM, 2 members, member 2 a LoRA clone of member 1 (resident copy)",
    "lora-repatched": "AMDM, 2 members, LoRA clone re-patched at every switch (--lowvram mode)",
    "batched": "AMDM, 2 members, one checkpoint, other prompts (batched)",
    "three": "AMDM, 3 members, distinct checkpoints",
}
MEMBERS = {"distinct": 2, "lora": 2, "lora-repatched": 2, "batched": 2, "three": 3}
LORA_RANK = 32


def cache_dir() -> Path:
    path = comfy_env().cache_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def unet_file(seed: int) -> Path:
    """An SD1.5 UNet with random weights (fp16 safetensors), generated once."""
    from safetensors.torch import save_file

    from .sd15 import sd15_model
    path = cache_dir() / f"sd15_unet_random_{seed}.safetensors"
    if not path.exists():
        logging.info("generating %s", path)
        model = sd15_model(torch.device("cpu"), seed=seed)
        state = {k: v.half().contiguous() for k, v in model.diffusion_model.state_dict().items()}
        save_file(state, str(path) + ".partial")
        os.replace(str(path) + ".partial", path)
    return path


def lora_file(model) -> Path:
    """A rank-32 LoRA on every attention and feed-forward projection of the UNet."""
    import comfy.lora
    from safetensors.torch import save_file
    path = cache_dir() / f"sd15_lora_rank{LORA_RANK}.safetensors"
    if path.exists():
        return path
    generator = torch.Generator().manual_seed(11)
    state = {}
    for lora_key, model_key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if not isinstance(model_key, str) or not lora_key.startswith("lora_unet_") or \
                not any(p in model_key for p in ("attn1.", "attn2.", ".ff.")) or \
                not model_key.endswith(".weight"):
            continue
        weight = model.model.state_dict()[model_key]
        if weight.ndim != 2:
            continue
        out_features, in_features = weight.shape
        state[f"{lora_key}.lora_down.weight"] = (
            torch.randn(LORA_RANK, in_features, generator=generator) * 0.01).half()
        state[f"{lora_key}.lora_up.weight"] = (
            torch.randn(out_features, LORA_RANK, generator=generator) * 0.01).half()
        state[f"{lora_key}.alpha"] = torch.tensor(float(LORA_RANK))
    save_file(state, str(path) + ".partial")
    os.replace(str(path) + ".partial", path)
    return path


def load_unet(seed: int, dtype: torch.dtype) -> Any:
    import comfy.sd
    import comfy.utils
    return comfy.sd.load_diffusion_model_state_dict(
        comfy.utils.load_torch_file(str(unet_file(seed))), model_options={"dtype": dtype})


def run_row(row: str, steps: int, window: int, repeats: int, device: str) -> dict:
    """One row in this process: warm up, then time plain and AMDM alternately."""
    import comfy.model_management
    import comfy.sd
    import comfy.utils
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import Member
    comfy.utils.PROGRESS_BAR_ENABLED = False
    run_node = comfy_env().run_node
    dtype = torch.float16 if device == "cuda" else torch.float32
    gpu = comfy.model_management.get_torch_device() if device == "cuda" else None
    first = load_unet(0, dtype)
    if row in ("distinct", "three"):
        others = [load_unet(seed, dtype) for seed in range(1, MEMBERS[row])]
    elif row in ("lora", "lora-repatched"):
        lora = comfy.utils.load_torch_file(str(lora_file(first)))
        others = [comfy.sd.load_lora_for_models(first, None, lora, 1.0, 0.0)[0]]
    else:
        others = [first]
    generator = torch.Generator().manual_seed(5)
    prompts = [[[torch.randn(1, 77, 768, generator=generator), {}]] for _ in range(3)]
    negative = [[torch.zeros(1, 77, 768), {}]]
    stack = tuple(Member(model, prompts[i], negative, 7.0)
                  for i, model in enumerate([first, *others]))
    latent = {"samples": torch.zeros(1, 4, 64, 64)}
    schedule = Schedule(end_percent=1.0, end_step=window)
    if row == "lora-repatched":
        comfy.model_management.vram_state = comfy.model_management.VRAMState.LOW_VRAM

    def plain(n_steps: int) -> None:
        run_node("KSampler", model=first, seed=0, steps=n_steps, cfg=7.0, sampler_name="euler",
                 scheduler="normal", positive=prompts[0], negative=negative,
                 latent_image=latent, denoise=1.0)

    def amdm(n_steps: int) -> None:
        run_node("AMDMSampler", stack=stack, seed=0, steps=n_steps, sampler_name="euler",
                 scheduler="normal", latent_image=latent, denoise=1.0, schedule=schedule)

    plain(1)
    amdm(2)
    timings: dict[str, list[float]] = {"plain": [], "amdm": []}
    for _ in range(repeats):
        for name, run in (("plain", plain), ("amdm", amdm)):
            started = time.perf_counter()
            run(steps)
            if gpu is not None:
                torch.cuda.synchronize(gpu)
            timings[name].append(time.perf_counter() - started)
    return {"row": row, **{name: min(times) for name, times in timings.items()},
            "plain_runs": timings["plain"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_vram_gib": None if gpu is None else torch.cuda.max_memory_allocated(gpu) / 2**30,
            "device": "CPU" if gpu is None else torch.cuda.get_device_name(gpu),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--window", type=int, default=8, help="window steps (from step 0)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs of plain and of AMDM per row, alternating; the fastest counts")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu: fp32 on the CPU; cuda: fp16 on the CUDA GPU ComfyUI chooses")
    parser.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup_comfy("gpu" if options.device == "cuda" else "cpu")
    if options.row:
        print(json.dumps(run_row(options.row, options.steps, options.window, options.repeats,
                                 options.device)))
        return
    unet_file(0)
    results = []
    for row in options.rows:
        child = subprocess.run([sys.executable, "-m", "benchmarks.shared_checkpoints",
                                "--row", row, "--steps", str(options.steps),
                                "--window", str(options.window), "--repeats", str(options.repeats),
                                "--device", options.device],
                               capture_output=True, text=True, cwd=Path(__file__).parents[1])
        if child.returncode != 0:
            raise RuntimeError(f"row {row} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        logging.getLogger(__name__).warning("row %s done", row)
    gpu = options.device == "cuda"
    print(f"torch {torch.__version__}, {results[0]['device']}, CPU threads {results[0]['threads']}, "
          f"SD1.5-size UNets (random weights, {'fp16' if gpu else 'fp32'}), 4x64x64 latent, euler, "
          f"{options.steps} steps, window {options.window} steps, fastest of {options.repeats} "
          f"alternating runs\n")
    print("| run | wall time / plain KSampler | evaluation bound | time / bound | peak RSS (GiB) |"
          + (" peak VRAM (GiB) | AMDM run (s) |" if gpu else ""))
    print("|---|---|---|---|---|" + ("---|---|" if gpu else ""))
    for result in results:
        n = MEMBERS[result["row"]]
        bound = (options.steps + (n - 1) * options.window) / options.steps
        ratio = result["amdm"] / result["plain"]
        print(f"| {ROWS[result['row']]} | {ratio:.2f} | {bound:.2f} | {ratio / bound:.2f} | "
              f"{result['peak_rss_gib']:.1f} |"
              + (f" {result['peak_vram_gib']:.1f} | {result['amdm']:.2f} |" if gpu else ""))
    plain_runs = [t for r in results for t in r["plain_runs"]]
    print(f"\nplain KSampler: {min(plain_runs):.2f} to {max(plain_runs):.2f} s per run over all "
          f"rows' processes. Reproduce: python3 -m benchmarks.shared_checkpoints "
          f"--steps {options.steps} --window {options.window} --repeats {options.repeats} "
          f"--rows {' '.join(options.rows)} --device {options.device}")


if __name__ == "__main__":
    main()
