"""Spherical aggregation of member latents and deviation (manifold) optimisation.

Every function takes the members stacked on a leading axis: ``proposals`` has shape
``[N, B, ...]`` (N members, B batch items). Norms are taken per member and per batch item
over the remaining axes, so batch items never influence each other. Arithmetic runs in
float32 whatever the inputs' dtype; results come back in the inputs' dtype and device.
"""
from __future__ import annotations

import torch

AGGREGATION_MODES = ("linear", "slerp", "paper")
DEVIATION_MODES = ("none", "relative", "absolute")

_TINY = torch.finfo(torch.float32).tiny


def _per_sample_norm(x: torch.Tensor, leading: int) -> torch.Tensor:
    """L2 norm over every axis after the first ``leading`` ones, kept broadcastable."""
    norm = torch.linalg.vector_norm(x.flatten(start_dim=leading), dim=-1)
    return norm.view(*norm.shape, *([1] * (x.ndim - leading)))


def member_coefficients(weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Blend coefficients of the members for one step.

    paper: w = a / ||a||_2 (two members with a = (w, sqrt(1 - w^2)) give the paper's
    ``w x_a + sqrt(1 - w^2) x_b``); linear and slerp: a / sum(a), a convex blend.
    """
    weights = weights.float()
    if mode == "paper":
        return weights / torch.linalg.vector_norm(weights)
    return weights / weights.sum()


def aggregate(proposals: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Merge the members' proposed next latents ``[N, B, ...]`` into one ``[B, ...]``.

    slerp takes the linear blend and rescales it, per batch item, to the weighted mean
    norm of the inputs: the blend of two independent Gaussian latents is shorter than
    either, and a latent at noise level sigma is expected on a sphere of its own radius.
    """
    x = proposals.float()
    coefficients = member_coefficients(weights, mode).to(x.device)
    blend = torch.tensordot(coefficients, x, dims=1)
    if mode == "slerp":
        target_norm = torch.tensordot(coefficients, _per_sample_norm(x, 2), dims=1)
        blend = blend * (target_norm / _per_sample_norm(blend, 1).clamp_min(_TINY))
    return blend.to(proposals.dtype)


def deviation_fractions(merged: torch.Tensor, proposals: torch.Tensor, strengths: torch.Tensor,
                        mode: str) -> torch.Tensor:
    """Fraction of the way from the merged latent back to each member's own proposal.

    relative: the strength r itself. absolute (the paper): a step of length p towards the
    proposal, i.e. p / ||merged - proposal||, never more than the whole distance so the
    step cannot overshoot the proposal. Shape ``[N, B, 1, ...]``.
    """
    shape = (proposals.shape[0],) + (1,) * (proposals.ndim - 1)
    strengths = strengths.float().to(proposals.device).view(shape)
    if mode == "none":
        return torch.zeros_like(strengths)
    if mode == "relative":
        return strengths
    distance = _per_sample_norm(proposals.float() - merged.float(), 2)
    return (strengths / distance.clamp_min(_TINY)).clamp_max(1.0)


def deviate(merged: torch.Tensor, proposals: torch.Tensor, strengths: torch.Tensor,
            mode: str) -> torch.Tensor:
    """Each member's corrected copy of the merged latent: ``[N, B, ...]``.

    x_m = merged - step_m * (merged - mu_m) / ||merged - mu_m||, written as a lerp from the
    merged latent towards the member's own proposal mu_m.
    """
    fractions = deviation_fractions(merged, proposals, strengths, mode)
    merged_f = merged.float().expand(proposals.shape)
    return torch.lerp(merged_f, proposals.float(), fractions).to(proposals.dtype)
