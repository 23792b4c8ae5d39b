"""What AMDM adds per step, next to what a model evaluation costs.

    python3 -m benchmarks.overhead [--device cpu|cuda] [--repeats 30]

Prints two markdown tables, every number measured in this run on this machine:
1. the aggregation step itself (aggregate + deviate, amdm_core) against one SD1.5-size
   UNet evaluation (random weights, the real architecture, cond + uncond batch);
2. the whole per-step driver (ComfyUI sampler restarts, member switching, seeds,
   aggregation) measured with a UNet that returns zeros, so that only the glue is timed:
   time per member step of AMDMSampler against time per step of ComfyUI's KSampler.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

import torch

from .comfy_setup import comfy_env, setup_comfy
from .sd15 import sd15_model, sd15_patcher


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sd15_unet(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """One SD1.5 UNet evaluation, cond + uncond batch."""
    model = sd15_model(device)
    context = torch.randn(2, 77, 768, device=device)
    timestep = torch.tensor([500.0, 500.0], device=device)

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.diffusion_model(x, timestep, context=context)
    return evaluate


def aggregation_table(device: torch.device, repeats: int) -> list[str]:
    from comfyui_amdm.amdm_core import WindowPlan, aggregation_step
    unet = sd15_unet(device)
    unet_seconds = median_seconds(lambda: unet(torch.randn(2, 4, 64, 64, device=device)),
                                  max(3, repeats // 10), device)
    rows = ["| members | latent | aggregation | deviation | AMDM step (ms) | SD1.5 UNet eval, "
            "4x64x64 cond+uncond (ms) | ratio |", "|---|---|---|---|---|---|---|"]
    for members in (2, 3):
        for shape in ((4, 64, 64), (4, 128, 128)):
            proposals = torch.randn(members, 1, *shape, device=device)
            weights = torch.ones(members, device=device)
            strengths = torch.full((members,), 40.0, device=device)
            for aggregation, deviation in (("linear", "none"), ("slerp", "absolute")):
                plan = WindowPlan(range(1), weights[None], strengths[None], aggregation, deviation)
                seconds = median_seconds(
                    lambda: aggregation_step(proposals, weights, strengths, plan), repeats, device)
                rows.append(f"| {members} | {'x'.join(map(str, shape))} | {aggregation} | "
                            f"{deviation} | {seconds * 1e3:.3f} | {unet_seconds * 1e3:.0f} | "
                            f"{seconds / unet_seconds:.2e} |")
    return rows


def driver_table(repeats: int) -> list[str]:
    """AMDMSampler vs KSampler with a zero-cost UNet: the per-step glue of each."""
    import comfy.utils
    from comfyui_amdm.amdm_core import Schedule
    from comfyui_amdm.nodes import Member
    comfy.utils.PROGRESS_BAR_ENABLED = False
    run_node = comfy_env().run_node
    cpu = torch.device("cpu")
    null = sd15_patcher(cpu)
    null.set_model_unet_function_wrapper(lambda apply_model, args: torch.zeros_like(args["input"]))
    positive = [[torch.randn(1, 77, 768), {}]]
    negative = [[torch.zeros(1, 77, 768), {}]]
    latent = run_node("EmptyLatentImage", width=512, height=512, batch_size=1)[0]
    steps = 20
    rows = ["| run | sampler | member steps | time per member step (ms) |", "|---|---|---|---|"]
    for sampler in ("euler", "dpmpp_2m", "euler_ancestral"):
        def plain() -> None:
            run_node("KSampler", model=null, seed=0, steps=steps, cfg=7.0, sampler_name=sampler,
                     scheduler="normal", positive=positive, negative=negative,
                     latent_image=latent, denoise=1.0)
        plain_seconds = median_seconds(plain, repeats, torch.device("cpu"))
        rows.append(f"| KSampler | {sampler} | {steps} | {plain_seconds / steps * 1e3:.2f} |")
        for members in (2, 3):
            stack = tuple(Member(null, positive, negative, 7.0) for _ in range(members))
            schedule = Schedule(start_percent=0.0, end_percent=1.0, aggregation="slerp",
                                deviation_mode="absolute", deviation_strength=40.0)

            def aggregated() -> None:
                run_node("AMDMSampler", stack=stack, seed=0, steps=steps, sampler_name=sampler,
                         scheduler="normal", latent_image=latent, denoise=1.0, schedule=schedule)
            seconds = median_seconds(aggregated, repeats, torch.device("cpu"))
            rows.append(f"| AMDM, {members} members, window = all steps | {sampler} | "
                        f"{steps * members} | {seconds / (steps * members) * 1e3:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=30)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup_comfy()
    device = torch.device(options.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}\n")
    print("\n".join(aggregation_table(device, options.repeats)))
    print()
    print("\n".join(driver_table(max(3, options.repeats // 10))))


if __name__ == "__main__":
    main()
