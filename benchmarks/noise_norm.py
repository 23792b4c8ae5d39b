"""Does aggregation keep the latent at the norm its sigma expects?

    python3 -m benchmarks.noise_norm [--steps 20] [--sizes 64 128]

At every window step the merged latent is what each member continues from, so its norm
must be what the next sigma expects: early on a latent is almost all noise, and averaging
N independent noises keeps only about 1/sqrt(N) of it. This benchmark runs AMDMGuider on
SD-size latents (4x64x64 for every setting, larger sizes for the default and its
contrasts; batch 2) with two and three members of the SD1.5 ecosystem. Each member is
ComfyUI's SD1.5 model class at a narrow width with random weights, made a denoiser the way
the test suite's fixture checkpoints are (eps = a * c_in * x, a = ln(sigma_max) /
asinh(sigma_max), plus the member's own random UNet output scaled to 5% of that), so that
latents keep ordinary sizes and members differ, at a cost that lets 4x128x128 run on a
CPU. For each aggregation x noise mode it reports the largest deviation from 1, over the
window's steps and the batch items, of ||merged latent|| / ||target alone's latent at the
same step||. The target alone is the same stack with the other members at weight 0: the
target's own trajectory, driven one step per call with the same noise and step noise, so
its latent has the norm the model's own trajectory has at that sigma. (KSampler itself is
no reference for ancestral samplers: it seeds their first step noise like the initial
noise, so the two are the same tensor and add up coherently.) Only the window's steps are
run (the default window of a --steps schedule).

Prints a markdown table; every number comes from this run.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import time

import torch

from .comfy_setup import setup_comfy
from .sd15 import CHEAP, sd15_patcher

SEED = 7
NARROW_CHANNELS = 32
RANDOM_SHARE = 0.05
# The paper's deviation length for 4x64x64 latents (its p, about 45 to 55).
PAPER_P = 50.0


def denoiser(patcher, sigma_max: float):
    """A clone of ``patcher`` whose prediction is eps = a * c_in * x plus its random UNet's
    eps scaled to RANDOM_SHARE of that (per item), through ComfyUI's UNet wrapper."""
    gain = math.log(sigma_max) / math.asinh(sigma_max)
    shaped = patcher.clone()

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"].view(-1, 1, 1, 1)
        random_eps = (x - apply_model(x, args["timestep"], **args["c"])) / sigma
        base = gain * x / (sigma ** 2 + 1).sqrt()
        scale = RANDOM_SHARE * base.flatten(1).norm(dim=1) / \
            random_eps.flatten(1).norm(dim=1).clamp_min(1e-12)
        return x - sigma * (base + scale.view(-1, 1, 1, 1) * random_eps)
    shaped.set_model_unet_function_wrapper(wrapper)
    return shaped


def latent_norms(guider, noise: torch.Tensor, latent: torch.Tensor, sampler,
                 sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Per-item norms of the latent at the start of every step (the callback's x), then of
    the result (every norm in the same latent units: ratios of them are what counts)."""
    norms: list[torch.Tensor] = []
    result = guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=SEED,
                           callback=lambda step, x0, x, total:
                           norms.append(x.flatten(1).norm(dim=1)))
    return norms + [result.flatten(1).norm(dim=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128],
                        help="latent sizes: 64 runs every setting, any other size the default "
                             "and its contrasts")
    parser.add_argument("--samplers", nargs="+", default=["euler", "euler_ancestral"])
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    setup_comfy()
    import comfy.sample
    import comfy.samplers
    from comfyui_amdm.amdm_core import Schedule, steps_in
    from comfyui_amdm.nodes import AMDMGuider, Member
    cpu = torch.device("cpu")
    narrow = [sd15_patcher(cpu, NARROW_CHANNELS, seed=m, **CHEAP) for m in range(3)]
    sigma_max = float(narrow[0].get_model_object("model_sampling").sigma_max)
    models = [denoiser(model, sigma_max) for model in narrow]
    generator = torch.Generator().manual_seed(SEED)
    positives = [[[torch.randn(1, 77, 768, generator=generator), {}]] for _ in range(3)]
    negative = [[torch.zeros(1, 77, 768), {}]]
    default = Schedule()
    model_sampling = models[0].get_model_object("model_sampling")
    schedule_sigmas = comfy.samplers.calculate_sigmas(model_sampling, "normal", options.steps)
    window = steps_in(schedule_sigmas.tolist(), model_sampling.percent_to_sigma, default.window)
    sigmas = schedule_sigmas[:window.stop + 1]  # the window's steps only
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, window steps "
          f"{window.start} to {window.stop - 1} of {options.steps} (normal scheduler), cfg 7, "
          f"batch 2, denoiser-shaped narrow SD1.5 members\n")
    print("| latent | members | sampler | aggregation | noise_mode | deviation | largest "
          "deviation of the norm ratio from 1 over the window | default |")
    print("|---|---|---|---|---|---|---|---|")
    contrasts = [("linear", "shared", "none"), ("linear", "independent", "none"),
                 ("slerp", "independent", "none")]
    everything = [(a, n, "none") for a in ("linear", "slerp", "paper")
                  for n in ("shared", "independent")] + [("paper", "independent", "absolute")]
    started = time.monotonic()
    sizes = [(size, everything if size == 64 else contrasts) for size in options.sizes]
    for (size, settings), sampler_name in itertools.product(sizes, options.samplers):
        sampler = comfy.samplers.sampler_object(sampler_name)
        latent = torch.zeros(2, 4, size, size)
        noise = comfy.sample.prepare_noise(latent, SEED)
        # With the others at weight 0 every aggregation and deviation leaves the target's own
        # latent, so the reference depends only on the member count and the noise mode.
        references: dict[tuple[int, str], list[torch.Tensor]] = {}
        for n_members, (aggregation, noise_mode, deviation) in itertools.product((2, 3),
                                                                                 settings):
            strength = PAPER_P * size / 64 if deviation == "absolute" else 0.0
            schedule = Schedule(aggregation=aggregation, noise_mode=noise_mode,
                                deviation_mode=deviation, deviation_strength=strength)
            stack = [Member(models[m], positives[m], negative, 7.0) for m in range(n_members)]
            if (n_members, noise_mode) not in references:
                target_alone = [Member(models[m], positives[m], negative, 7.0,
                                       weight=float(m == 0)) for m in range(n_members)]
                references[n_members, noise_mode] = latent_norms(
                    AMDMGuider(target_alone, Schedule(noise_mode=noise_mode)), noise, latent,
                    sampler, sigmas)
            reference = references[n_members, noise_mode]
            norms = latent_norms(AMDMGuider(stack, schedule), noise, latent, sampler, sigmas)
            # the latents each window step produced: callback x of the next step, the result
            ratios = torch.stack([norms[k] / reference[k] for k in range(1, len(norms))])
            worst = float((ratios - 1).abs().max())
            is_default = (aggregation, noise_mode, deviation) == (
                default.aggregation, default.noise_mode, default.deviation_mode)
            shown = deviation if deviation == "none" else f"{deviation} {strength:g}"
            print(f"| 4x{size}x{size} | {n_members} | {sampler_name} | {aggregation} | "
                  f"{noise_mode} | {shown} | {worst:.1%} | {'yes' if is_default else ''} |",
                  flush=True)
    print(f"\n{time.monotonic() - started:.0f} s. Reproduce: python3 -m benchmarks.noise_norm")


if __name__ == "__main__":
    main()
