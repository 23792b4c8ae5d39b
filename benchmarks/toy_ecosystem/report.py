"""The study's outputs: markdown tables, the machine-readable result, the frontier plot and
the grid of samples (drawn with PIL, no plotting library)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from . import task
from .rows import Row
from .study import METRICS, RowSummary, Statistic

DIGITS = 4


def _format(stat: Statistic, digits: int = 2) -> str:
    return f"{stat.mean:.{digits}f}"


def markdown_table(summaries: Sequence[RowSummary], first_number: int) -> str:
    """One line per row, numbered as in the grid and the plot; joint with one standard
    error over ecosystems and each ecosystem's value."""
    aspects = summaries[0].aspects
    joint = "joint (" + " + ".join(aspects) + ")" if len(aspects) < len(task.ASPECTS) else "joint"
    header = (f"| # | group | method | evals/image | {' | '.join(task.ASPECTS)} | **{joint}** ± s.e. | "
              f"{joint} per ecosystem | realism (lower better) |")
    lines = [header, "|" + "---|" * (len(task.ASPECTS) + 7)]
    for number, summary in enumerate(summaries, start=first_number):
        metrics = summary.metrics
        per_ecosystem = " / ".join(f"{value:.2f}" for value in summary.joint.per_ecosystem)
        lines.append(f"| {number} | {summary.row.group} | {summary.row.name} | {summary.evaluations_per_image:.0f} | "
                     + " | ".join(_format(metrics[aspect]) for aspect in task.ASPECTS)
                     + f" | **{summary.joint.mean:.2f}** ± {summary.joint.standard_error:.2f} | {per_ecosystem} | "
                     f"{metrics['realism'].mean:.3f} |")
    return "\n".join(lines)


def _statistic_json(stat: Statistic) -> dict:
    """Rounded; the standard error is null for a single ecosystem."""
    error = None if math.isnan(stat.standard_error) else round(stat.standard_error, DIGITS)
    return {"mean": round(stat.mean, DIGITS), "standard_error": error,
            "per_ecosystem": [round(value, DIGITS) for value in stat.per_ecosystem]}


def rows_json(summaries: Sequence[RowSummary], first_number: int) -> list[dict]:
    return [{"number": number, "group": s.row.group, "method": s.row.name, "members": list(s.row.members),
             "joint_aspects": list(s.aspects), "evals_per_image": round(s.evaluations_per_image, DIGITS),
             **{name: _statistic_json(s.metrics[name]) for name in METRICS}}
            for number, s in enumerate(summaries, start=first_number)]


def _statistic_from_json(entry: dict) -> Statistic:
    error = entry["standard_error"]
    return Statistic(entry["mean"], math.nan if error is None else error, tuple(entry["per_ecosystem"]))


def summaries_from_json(entries: Sequence[dict], known: Sequence[Row]) -> list[RowSummary]:
    """The inverse of rows_json, without the latents: the summaries as the JSON holds them
    (rounded), each with the row of ``known`` of its name (in the group the JSON gives)."""
    by_name = {row.name: row for row in known}
    unknown = [entry["method"] for entry in entries if entry["method"] not in by_name]
    if unknown:
        raise ValueError(f"rows not among the known rows: {'; '.join(unknown)}")
    return [RowSummary(replace(by_name[entry["method"]], group=entry["group"]), tuple(entry["joint_aspects"]),
                       entry["evals_per_image"], {name: _statistic_from_json(entry[name]) for name in METRICS}, ())
            for entry in entries]


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1) + "\n")


# Display colours of the four channel patterns (task.COLOUR_NAMES order), in 8-bit levels.
PALETTE = torch.tensor([[255, 255, 255], [255, 51, 51], [51, 230, 51], [77, 102, 255]])
# Latents are rounded to multiples of 1 / LATENT_QUANTUM (a power of two: the scaling is
# exact) and rendered in integer arithmetic, so the pixels are a function of the rounded
# latents alone: float sums taken in another order (other CPU kernels) cannot move a value
# lying on a rounding boundary by one level.
LATENT_QUANTUM = 2 ** 12
FONT_SIZE = 13
BACKGROUND = (40, 40, 40)
TEXT = (230, 230, 230)


def font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """[B, GRID, GRID, 3] 8-bit levels: each channel pattern maps to its palette colour (the
    patterns are orthogonal with squared norm CHANNELS, so x @ COLOURS.T / CHANNELS reads
    them out), computed exactly in integers from the latents rounded to 1 / LATENT_QUANTUM."""
    fixed = (latents.float() * LATENT_QUANTUM).round().long()
    pattern_weights = (fixed[:, None] * task.COLOURS.long()[None, :, :, None, None]).sum(dim=2)
    scaled = (pattern_weights[..., None] * PALETTE[None, :, None, None, :]).sum(dim=1)
    divisor = task.CHANNELS * LATENT_QUANTUM
    return torch.div(scaled + divisor // 2, divisor, rounding_mode="floor").clamp(0, 255).to(torch.uint8)


def wrap(text: str, width: int, face: ImageFont.FreeTypeFont) -> list[str]:
    """Lines of at most `width` pixels, broken at spaces."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def sample_grid(rows: list[tuple[str, torch.Tensor]], path: Path, pixel: int = 6, label_width: int = 420) -> None:
    """One row of images per entry, labelled with its whole label wrapped over as many
    lines as it needs; equal image counts per row."""
    face = font()
    line_height = FONT_SIZE + 3
    columns = rows[0][1].shape[0]
    tile = task.GRID * pixel
    labels = [wrap(label, label_width - 8, face) for label, _ in rows]
    heights = [max(tile + 2, len(lines) * line_height + 4) for lines in labels]
    image = Image.new("RGB", (label_width + columns * (tile + 2), sum(heights)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    top = 0
    for (_, latents), lines, height in zip(rows, labels, heights):
        for index, line in enumerate(lines):
            draw.text((4, top + 2 + index * line_height), line, fill=TEXT, font=face)
        rgb = latent_to_rgb(latents[:columns]).numpy()
        for column in range(columns):
            picture = Image.fromarray(rgb[column]).resize((tile, tile), Image.NEAREST)
            image.paste(picture, (label_width + column * (tile + 2) + 1, top + 1))
        draw.line([(0, top + height - 1), (image.width, top + height - 1)], fill=(70, 70, 70))
        top += height
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# Plot families: (name, colour, which rows).
FAMILIES = (
    ("member alone / base", (150, 150, 150), lambda s: s.row.group in ("member alone", "reference")),
    ("step handoff", (230, 150, 40), lambda s: s.row.name.startswith("step handoff")),
    ("weight merge", (160, 100, 60), lambda s: s.row.name.startswith("weight merge")),
    ("score sum", (20, 20, 20), lambda s: s.row.name.startswith("score sum")),
    ("AMDM, averaged guidance", (60, 110, 220), lambda s: s.row.amdm is not None and s.row.amdm.guidance == "averaged"),
    ("AMDM, full guidance", (30, 160, 80), lambda s: s.row.amdm is not None and s.row.amdm.guidance == "full"),
)


def _handoff(combine: str, guidance: str | None = None) -> Callable:
    """Overlap rows of the handoff table combined so (and with this guidance, if given)."""
    def member(summary: RowSummary) -> bool:
        handoff = summary.row.handoff
        return handoff is not None and handoff.overlap > 0 and handoff.combine == combine and \
            guidance in (None, handoff.guidance)
    return member


HANDOFF_FAMILIES = (
    ("expert alone / base", (150, 150, 150), lambda s: s.row.group in ("expert alone", "reference")),
    ("hard switch", (230, 150, 40), lambda s: s.row.handoff is not None and s.row.handoff.overlap == 0),
    ("score sum over the overlap", (20, 20, 20), _handoff("score sum")),
    ("overlap, full guidance", (30, 160, 80), _handoff("ranges", "full")),
    ("overlap, averaged guidance", (60, 110, 220), _handoff("ranges", "averaged")),
)
FRONTIER_NOTE = ("numbers: rows of the table in docs/toy_ecosystem.md; bars: one standard error over the ecosystems; "
                 "overlapping rows of equal cost are spread sideways; line: the window sweep around the "
                 "budget preset")
PRESET_COLOUR = (210, 40, 40)
JITTER = 7  # pixels between overlapping rows of equal cost in the plot
OVERLAP = 0.03  # values closer than this at one cost would hide each other


def frontier_plot(summaries: Sequence[RowSummary], path: Path, title: str,
                  lines: Sequence[Sequence[RowSummary]] = ()) -> None:
    """docs/toy_ecosystem.md's chart (see frontier_chart), saved to ``path``."""
    image = frontier_chart(summaries, title, lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def save_side_by_side(images: Sequence[Image.Image], path: Path) -> None:
    """Images next to each other, in one file."""
    joined = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), (255, 255, 255))
    left = 0
    for image in images:
        joined.paste(image, (left, 0))
        left += image.width
    path.parent.mkdir(parents=True, exist_ok=True)
    joined.save(path)


def frontier_chart(summaries: Sequence[RowSummary], title: str, lines: Sequence[Sequence[RowSummary]] = (),
                   first_number: int = 1, size: tuple[int, int] = (980, 640), families: Sequence = FAMILIES,
                   note: str = FRONTIER_NOTE, preset_group: str = "AMDM preset",
                   metric: tuple[str, str] = ("joint", "joint accuracy"), x_from: int = 0) -> Image.Image:
    """Joint accuracy (mean over ecosystems, bars: one standard error) against model
    evaluations per image; points numbered as in the table, coloured by the first of
    ``families`` they belong to (rows of ``preset_group``: red); the rows of each of
    ``lines`` (a sweep of one setting) joined by a line. ``metric``: the y axis (a metric
    in [0, 1], its label); the x axis starts at ``x_from`` evaluations."""
    key, label = metric
    width, height = size
    left, right, top, bottom = 70, 250, 50, 60
    x_max = 10 * (int(max(s.evaluations_per_image for s in summaries)) // 10 + 2)
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    face, small = font(14), font(11)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_from) / (x_max - x_from) * (width - left - right),
                height - bottom - y * (height - top - bottom))

    for tick in range(0, 11):
        _, y = to_pixel(0, tick / 10)
        draw.line([(left, y), (width - right, y)], fill=(235, 235, 235))
        draw.text((left - 8, y), f"{tick / 10:.1f}", fill=(0, 0, 0), font=small, anchor="rm")
    for tick in range(x_from, x_max + 1, 20 if x_max - x_from > 60 else 5):
        x, _ = to_pixel(tick, 0)
        draw.line([(x, top), (x, height - bottom)], fill=(235, 235, 235))
        draw.text((x, height - bottom + 8), str(tick), fill=(0, 0, 0), font=small, anchor="mt")
    draw.rectangle([to_pixel(x_from, 1), to_pixel(x_max, 0)], outline=(0, 0, 0))
    draw.text(((left + width - right) / 2, height - 22), "model evaluations per image", fill=(0, 0, 0),
              font=face, anchor="mm")
    draw.text((left, top - 6), label, fill=(0, 0, 0), font=face, anchor="ls")
    draw.text((left, 4), title, fill=(0, 0, 0), font=face)

    numbered = list(enumerate(summaries, start=first_number))
    # Rows of equal cost whose accuracies overlap are spread sideways (in accuracy order) so
    # that each stays readable; every other point sits at its exact cost.
    offsets: dict[int, float] = {}
    for cost in {s.evaluations_per_image for _, s in numbered}:
        same = sorted((n for n, s in numbered if s.evaluations_per_image == cost),
                      key=lambda n: summaries[n - first_number].metrics[key].mean)
        clusters: list[list[int]] = []
        for number in same:
            mean = summaries[number - first_number].metrics[key].mean
            if clusters and mean - summaries[clusters[-1][-1] - first_number].metrics[key].mean < OVERLAP:
                clusters[-1].append(number)
            else:
                clusters.append([number])
        for cluster in clusters:
            for index, number in enumerate(cluster):
                offsets[number] = (index - (len(cluster) - 1) / 2) * JITTER

    def place(number: int, summary: RowSummary) -> tuple[float, float]:
        x, y = to_pixel(summary.evaluations_per_image, summary.metrics[key].mean)
        return x + offsets[number], y

    for sweep in lines:
        line = sorted(((n, s) for n, s in numbered if any(s is member for member in sweep)),
                      key=lambda n_s: n_s[1].evaluations_per_image)
        if len(line) > 1:
            draw.line([place(n, s) for n, s in line], fill=(120, 120, 120), width=2)
    for number, summary in numbered:
        colour = next((c for _, c, member in families if member(summary)), (0, 0, 0))
        if summary.row.group == preset_group:
            colour = PRESET_COLOUR
        x, y = place(number, summary)
        error = summary.metrics[key].standard_error * (height - top - bottom)
        draw.line([(x, y - error), (x, y + error)], fill=colour, width=2)
        draw.line([(x - 4, y - error), (x + 4, y - error)], fill=colour)
        draw.line([(x - 4, y + error), (x + 4, y + error)], fill=colour)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
        draw.text((x + 7, y - 2), str(number), fill=colour, font=small, anchor="lm")

    legend_x, legend_y = width - right + 16, top + 4
    entries = [(name, colour) for name, colour, _ in families] + [(preset_group, PRESET_COLOUR)]
    for index, (name, colour) in enumerate(entries):
        y = legend_y + index * 22
        draw.ellipse([legend_x, y + 3, legend_x + 10, y + 13], fill=colour)
        draw.text((legend_x + 16, y + 8), name, fill=(0, 0, 0), font=small, anchor="lm")
    for index, line in enumerate(wrap(note, right - 24, small)):
        draw.text((legend_x, legend_y + len(entries) * 22 + 12 + index * 14), line, fill=(90, 90, 90), font=small)
    return image
