"""Does aggregation keep the latent at the norm its sigma expects?

    python3 -m benchmarks.noise_norm [--steps 20] [--sizes 64 128]

At every window step the merged latent is what each member continues from, so its norm
must be what the next sigma expects: early on a latent is almost all noise, and averaging
N independent noises keeps only about 1/sqrt(N) of it. This benchmark runs AMDMSampler on
SD-size latents (4x64x64 and 4x128x128, batch 2) with two and three members of the SD1.5
ecosystem (ComfyUI's SD1.5 model class at a narrow width, random weights: the noise, not
the UNet, decides the norm early on) and reports, for every aggregation x noise mode, the
largest deviation over the window's steps of ||merged latent|| / ||target alone's latent at
the same step|| from 1, per batch item. The target alone is ComfyUI's KSampler with the
same seed: its latent has the norm the model's own trajectory has at that sigma.

Prints a markdown table; every number comes from this run.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import time

import torch

from .comfy_setup import setup_comfy
from .sd15 import CHEAP, sd15_patcher

NARROW_CHANNELS = 32
SEED = 7


def latent_norms(guider, noise: torch.Tensor, latent: torch.Tensor, sampler,
                 sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Per-item norms of the latent at the start of every step (the callback's x)."""
    norms: list[torch.Tensor] = []
    guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=SEED,
                  callback=lambda step, x0, x, total: norms.append(x.flatten(1).norm(dim=1)))
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128],
                        help="latent sizes (64 = 512 px, 128 = 1024 px)")
    parser.add_argument("--samplers", nargs="+", default=["euler", "euler_ancestral"])
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    setup_comfy()
    import comfy.sample
    import comfy.samplers
    from comfyui_amdm.amdm_core import AGGREGATION_MODES, NOISE_MODES, Schedule, window_for
    from comfyui_amdm.nodes import AMDMGuider, Member
    cpu = torch.device("cpu")
    models = [sd15_patcher(cpu, NARROW_CHANNELS, seed=m, **CHEAP) for m in range(3)]
    generator = torch.Generator().manual_seed(SEED)
    contexts = [[[torch.randn(1, 77, 768, generator=generator), {}]] for _ in range(3)]
    negative = [[torch.zeros(1, 77, 768), {}]]
    default = Schedule()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {options.steps} steps, "
          f"normal scheduler, window {default.start_percent}-{default.end_percent}, batch 2\n")
    print("| latent | members | sampler | aggregation | noise_mode | largest deviation of "
          "the norm ratio from 1 over the window | default |")
    print("|---|---|---|---|---|---|---|")
    started = time.monotonic()
    model_sampling = models[0].get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", options.steps)
    window = window_for(sigmas.tolist(), model_sampling.percent_to_sigma, default)
    reference_guider = comfy.samplers.CFGGuider(models[0])
    reference_guider.set_conds(contexts[0], negative)
    reference_guider.set_cfg(7.0)
    for size, sampler_name in itertools.product(options.sizes, options.samplers):
        sampler = comfy.samplers.sampler_object(sampler_name)
        latent = torch.zeros(2, 4, size, size)
        noise = comfy.sample.prepare_noise(latent, SEED)
        reference = latent_norms(reference_guider, noise, latent, sampler, sigmas)
        for n_members, aggregation, noise_mode in itertools.product(
                (2, 3), AGGREGATION_MODES, NOISE_MODES):
            schedule = Schedule(aggregation=aggregation, noise_mode=noise_mode)
            stack = [Member(models[m], contexts[m], negative, 7.0) for m in range(n_members)]
            norms = latent_norms(AMDMGuider(stack, schedule), noise, latent, sampler, sigmas)
            # the latents each window step produced: callback x of the steps after them
            ratios = torch.stack([norms[k + 1] / reference[k + 1] for k in window])
            deviation = float((ratios - 1).abs().max())
            is_default = (aggregation, noise_mode) == (default.aggregation, default.noise_mode)
            print(f"| 4x{size}x{size} | {n_members} | {sampler_name} | {aggregation} | {noise_mode} "
                  f"| {deviation:.1%} | {'yes' if is_default else ''} |", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s. Reproduce: python3 -m benchmarks.noise_norm")


if __name__ == "__main__":
    main()
