"""The synthetic image task: latents holding one object with exact ground truth.

A latent is CHANNELS x GRID x GRID. It is zero except for one 3x3 object whose
position (a quadrant), colour (a channel pattern) and shape (a 3x3 mask) are each
chosen from a small set, so every clean render, and what it shows, is known exactly.
This module is plain torch: it never imports ComfyUI.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

CHANNELS = 4
GRID = 8

# Object centres, one per quadrant; a 3x3 object around them stays inside its quadrant.
POSITIONS: tuple[tuple[int, int], ...] = ((2, 2), (2, 5), (5, 2), (5, 5))
POSITION_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")

# Colours are the rows of a 4x4 Hadamard matrix: mutually orthogonal channel patterns
# of equal norm, so a nearest-colour decision is unbiased.
COLOURS = torch.tensor(
    [[1.0, 1.0, 1.0, 1.0],
     [1.0, -1.0, 1.0, -1.0],
     [1.0, 1.0, -1.0, -1.0],
     [1.0, -1.0, -1.0, 1.0]]
)
COLOUR_NAMES = ("white", "red", "green", "blue")

SHAPES = torch.tensor(
    [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
     [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]],
     [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]]
)
SHAPE_NAMES = ("square", "plus", "cross")

ASPECTS = ("position", "colour", "shape")
LABEL_NAMES = {"position": POSITION_NAMES, "colour": COLOUR_NAMES, "shape": SHAPE_NAMES}
LABEL_COUNTS = {"position": len(POSITIONS), "colour": len(COLOURS), "shape": len(SHAPES)}

# Conditioning: one token per aspect; the token of aspect a with label l is TOKEN_SCALE
# at CONTEXT_OFFSETS[a] + l, zero elsewhere. An all-zero token means "not specified" (the
# negative prompt). The scale (like a text encoder's output norm) makes cross-attention
# pick the labels up in fewer fine-tuning steps than unit one-hots (measured: colour
# learned in ~300 steps instead of ~400).
CONTEXT_TOKENS = len(ASPECTS)
CONTEXT_DIM = 16
CONTEXT_OFFSETS = {"position": 0, "colour": 4, "shape": 8}
TOKEN_SCALE = 4.0


@dataclass(frozen=True)
class Request:
    """What is asked for: one label index per aspect."""

    position: int
    colour: int
    shape: int

    def label(self, aspect: str) -> int:
        return getattr(self, aspect)


def all_requests() -> list[Request]:
    """Every combination of labels, in a fixed order."""
    return [Request(p, c, s) for p, c, s in itertools.product(
        range(LABEL_COUNTS["position"]), range(LABEL_COUNTS["colour"]), range(LABEL_COUNTS["shape"]))]


def benchmark_requests(count: int) -> list[Request]:
    """The first `count` requests of a fixed order in which every block of 12 covers each
    position x shape pair once and each colour three times, and 48 covers every
    combination once; so short lists stay balanced and no two aspects are correlated."""
    return [Request(position=index % 4, colour=(index // 12 + (index % 12) // 3) % 4, shape=index % 3)
            for index in range(min(count, len(all_requests())))]


def shape_mask(position: int, shape: int) -> torch.Tensor:
    """GRID x GRID 0/1 mask of a shape placed at a position."""
    row, col = POSITIONS[position]
    mask = torch.zeros(GRID, GRID)
    mask[row - 1:row + 2, col - 1:col + 2] = SHAPES[shape]
    return mask


def request_labels(requests: list[Request]) -> dict[str, torch.Tensor]:
    """{aspect: LongTensor [B]} the requested label of each aspect."""
    return {aspect: torch.tensor([request.label(aspect) for request in requests]) for aspect in ASPECTS}


def encode_labels(labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Context tensor [B, CONTEXT_TOKENS, CONTEXT_DIM] from {aspect: LongTensor [B]};
    a label of -1 gives that aspect the empty token."""
    batch = len(next(iter(labels.values())))
    context = torch.zeros(batch, CONTEXT_TOKENS, CONTEXT_DIM)
    for token, aspect in enumerate(ASPECTS):
        specified = labels[aspect] >= 0
        rows = torch.nonzero(specified).flatten()
        context[rows, token, CONTEXT_OFFSETS[aspect] + labels[aspect][specified]] = TOKEN_SCALE
    return context


def render_labels(labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, CHANNELS, GRID, GRID] clean latents: the colour pattern on the shape's pixels."""
    masks = placed_masks()[labels["shape"], labels["position"]]
    return COLOURS[labels["colour"]][:, :, None, None] * masks[:, None]


def render_all(requests: list[Request]) -> torch.Tensor:
    return render_labels(request_labels(requests))


def encode_requests(requests: list[Request]) -> torch.Tensor:
    """The full request, every aspect specified: what every member is given."""
    return encode_labels(request_labels(requests))


def empty_context(batch: int = 1) -> torch.Tensor:
    """The negative prompt: no aspect specified."""
    return torch.zeros(batch, CONTEXT_TOKENS, CONTEXT_DIM)


# Detectors. Each one reads one aspect from a latent with plain arithmetic; on clean
# renders all three are exact (tests feed every render).

def pixel_energy(latents: torch.Tensor) -> torch.Tensor:
    """[B, GRID, GRID]: the channel-vector length at each pixel (where the object is)."""
    return latents.norm(dim=1)


def detect_position(latents: torch.Tensor) -> torch.Tensor:
    """The quadrant holding the most energy."""
    energy = pixel_energy(latents)
    half = GRID // 2
    quadrants = torch.stack([
        energy[:, :half, :half].sum(dim=(1, 2)), energy[:, :half, half:].sum(dim=(1, 2)),
        energy[:, half:, :half].sum(dim=(1, 2)), energy[:, half:, half:].sum(dim=(1, 2))], dim=1)
    return quadrants.argmax(dim=1)


def detect_colour(latents: torch.Tensor) -> torch.Tensor:
    """The colour pattern best aligned with the energy-weighted mean channel vector."""
    energy = pixel_energy(latents)
    mean_vector = (latents * energy[:, None]).sum(dim=(2, 3))
    return (mean_vector @ COLOURS.T).argmax(dim=1)


def placed_masks() -> torch.Tensor:
    """[SHAPES, POSITIONS, GRID, GRID] every shape at every position (0/1)."""
    return torch.stack([torch.stack([shape_mask(p, s) for p in range(len(POSITIONS))])
                        for s in range(len(SHAPES))])


def detect_shape(latents: torch.Tensor) -> torch.Tensor:
    """The shape whose best placement has the highest cosine similarity with the energy map
    (cosine, not overlap, so the square does not win merely by covering the others)."""
    energy = pixel_energy(latents).flatten(1)
    energy = energy / energy.norm(dim=1, keepdim=True).clamp_min(1e-12)
    templates = placed_masks().flatten(2)
    templates = templates / templates.norm(dim=-1, keepdim=True)
    cosine = torch.einsum("bn,spn->bsp", energy, templates)
    return cosine.amax(dim=2).argmax(dim=1)


DETECTORS = {"position": detect_position, "colour": detect_colour, "shape": detect_shape}


def realism_distance(latents: torch.Tensor) -> torch.Tensor:
    """[B] RMS distance to the nearest clean render (0 = exactly on the data manifold).
    For scale: an empty latent is 0.28 from the nearest render, and distinct renders
    are at least 0.25 apart."""
    renders = render_all(all_requests()).flatten(1)
    squared = torch.cdist(latents.flatten(1).float(), renders).square() / renders.shape[1]
    return squared.amin(dim=1).sqrt()
