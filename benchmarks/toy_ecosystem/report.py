"""Scores of sampled latents, the markdown table and the PNG grid of samples.
Plain torch and PIL: nothing here imports ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from . import task

# A sample counts as clean (on the data manifold) when it is closer to a render than
# half the smallest distance between two different renders (0.25).
CLEAN_DISTANCE = 0.125


@dataclass(frozen=True)
class Scores:
    accuracy: dict[str, float]  # aspect -> share of images showing the requested label
    joint: float  # share with every aspect as requested
    realism: float  # mean RMS distance to the nearest clean render (lower is better)
    clean: float  # share of images within CLEAN_DISTANCE of a render


def score(latents: torch.Tensor, requests: list[task.Request]) -> Scores:
    wanted = task.request_labels(requests)
    correct = {aspect: task.DETECTORS[aspect](latents) == wanted[aspect] for aspect in task.ASPECTS}
    joint = torch.stack(list(correct.values())).all(dim=0)
    distance = task.realism_distance(latents)
    return Scores(accuracy={aspect: hits.float().mean().item() for aspect, hits in correct.items()},
                  joint=joint.float().mean().item(), realism=distance.mean().item(),
                  clean=(distance < CLEAN_DISTANCE).float().mean().item())


@dataclass(frozen=True)
class RowResult:
    group: str
    name: str
    scores: Scores
    evaluations_per_image: float
    seconds: float
    latents: torch.Tensor  # all images, in the order of the benchmark's requests x seeds
    amdm: Any = None  # the AMDM row's settings (methods.AMDMSettings); None for other rows


def markdown_table(results: list[RowResult]) -> str:
    """One line per row, numbered as in the sample grid."""
    header = ("| # | group | method | " + " | ".join(task.ASPECTS)
              + " | joint | realism (dist, lower better) | clean | evals/image | seconds |")
    lines = [header, "|" + "---|" * (len(task.ASPECTS) + 9)]
    for number, result in enumerate(results, start=1):
        s = result.scores
        aspects = " | ".join(f"{s.accuracy[aspect]:.2f}" for aspect in task.ASPECTS)
        lines.append(f"| {number} | {result.group} | {result.name} | {aspects} | **{s.joint:.2f}** | "
                     f"{s.realism:.3f} | {s.clean:.2f} | {result.evaluations_per_image:.0f} | "
                     f"{result.seconds:.1f} |")
    return "\n".join(lines)


# Display colours of the four channel patterns (task.COLOUR_NAMES order).
PALETTE = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.3, 0.4, 1.0]])


def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """[B, GRID, GRID, 3] in [0, 1]: each channel pattern maps to its palette colour
    (the patterns are orthogonal with squared norm 4, so x @ COLOURS.T / 4 reads them out)."""
    weights = torch.einsum("bchw,kc->bhwk", latents.float(), task.COLOURS) / task.CHANNELS
    return (weights @ PALETTE).clamp(0.0, 1.0)


def sample_grid(rows: list[tuple[str, torch.Tensor]], path: Path, pixel: int = 6,
                label_width: int = 400) -> None:
    """One labelled row of images per entry; equal image counts per row."""
    columns = rows[0][1].shape[0]
    cell = task.GRID * pixel + 2
    image = Image.new("RGB", (label_width + columns * cell, len(rows) * cell), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    for row_index, (label, latents) in enumerate(rows):
        top = row_index * cell
        draw.text((4, top + cell // 2 - 6), label, fill=(230, 230, 230))
        rgb = (latent_to_rgb(latents) * 255).round().to(torch.uint8).numpy()
        for column in range(columns):
            tile = Image.fromarray(rgb[column]).resize((task.GRID * pixel, task.GRID * pixel),
                                                      Image.NEAREST)
            image.paste(tile, (label_width + column * cell + 1, top + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
