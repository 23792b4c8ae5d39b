"""What one step of each ComfyUI sampler means when AMDM drives it one step per call.

Inside the window every member takes one step at a time, so that the members' proposals
can be merged between steps. A sampler function called on the two sigmas of one step is
that sampler's own step for most samplers, but not for all of them; SAMPLERS says, for
every sampler ComfyUI offers, which of four cases it is:

- exact: a one-step call is exactly that sampler's step (single-step samplers; the
  stochastic ones draw their noise from a per-call seed).
- restarts: a multistep sampler (or one that looks ahead at later sigmas) keeps no
  history between calls, so each window step is its first-order start, and the target
  restarts its history once more when it continues alone after the window.
- adapted: the sampler cannot take a single step (ComfyUI's UniPC takes order 0 on one
  step: it evaluates the model and discards the prediction). Calls of fewer than two
  steps use ``single_step_sampler`` instead, which is the sampler's own first-order step.
- refused: the sampler ignores the scheduler's sigmas (dpm_fast picks its own spacing,
  dpm_adaptive solves the whole interval adaptively), so "step k" has no meaning for it.

This table is the one place that knows samplers by name; README and node docs show it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

EXACT, RESTARTS, ADAPTED, REFUSED = "exact", "restarts", "adapted", "refused"


@dataclass(frozen=True)
class SamplerBehaviour:
    """How AMDM drives one sampler. ``evaluations`` is the number of model evaluations of
    one step (at most; a final step to sigma 0 may take fewer)."""

    drive: str
    evaluations: int
    note: str = ""
    single_step_sampler: Optional[str] = None


def _table() -> dict[str, SamplerBehaviour]:
    exact = {
        "euler": 1, "euler_cfg_pp": 1, "euler_ancestral": 1, "euler_ancestral_cfg_pp": 1,
        "ddim": 1, "ddpm": 1, "lcm": 1,
        "heun": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2,
        "dpmpp_2s_ancestral_cfg_pp": 2, "dpmpp_sde": 2, "dpmpp_sde_gpu": 2, "seeds_2": 2,
        "exp_heun_2_x0": 2, "exp_heun_2_x0_sde": 2, "seeds_3": 3,
    }
    restarts = {
        "lms": 1, "dpmpp_2m": 1, "dpmpp_2m_cfg_pp": 1, "dpmpp_2m_sde": 1, "dpmpp_2m_sde_gpu": 1,
        "dpmpp_2m_sde_heun": 1, "dpmpp_2m_sde_heun_gpu": 1, "dpmpp_3m_sde": 1,
        "dpmpp_3m_sde_gpu": 1, "ipndm": 1, "ipndm_v": 1, "deis": 1, "res_multistep": 1,
        "res_multistep_cfg_pp": 1, "res_multistep_ancestral": 1,
        "res_multistep_ancestral_cfg_pp": 1, "gradient_estimation": 1,
        "gradient_estimation_cfg_pp": 1, "er_sde": 1, "cfgpp_ud10_ab": 1, "sa_solver": 1,
        "sa_solver_pece": 2,
    }
    table = {name: SamplerBehaviour(EXACT, n, "single-step: a one-step call is its own step")
             for name, n in exact.items()}
    table.update({name: SamplerBehaviour(RESTARTS, n, "multistep: each window step is its "
                                                      "first-order start")
                  for name, n in restarts.items()})
    table["sa_solver"] = SamplerBehaviour(RESTARTS, 1, "loses its corrector (needs the "
                                                       "previous step) in the window")
    table["sa_solver_pece"] = SamplerBehaviour(RESTARTS, 2, "loses its corrector (needs the "
                                                            "previous step) in the window")
    table["heunpp2"] = SamplerBehaviour(RESTARTS, 1, "looks two sigmas ahead: a one-step "
                                                     "call is its final-step form, euler")
    for name in ("uni_pc", "uni_pc_bh2"):
        table[name] = SamplerBehaviour(ADAPTED, 1, "UniPC cannot take a single step; steps "
                                                   "taken one at a time use euler, UniPC's "
                                                   "first-order predictor",
                                       single_step_sampler="euler")
    table["dpm_fast"] = SamplerBehaviour(REFUSED, 0, "chooses its own sigmas, ignoring the "
                                                     "scheduler's")
    table["dpm_adaptive"] = SamplerBehaviour(REFUSED, 0, "solves each interval adaptively "
                                                         "with many evaluations")
    return table


SAMPLERS: dict[str, SamplerBehaviour] = _table()

# ComfyUI builds most SAMPLERs as KSAMPLER(k_diffusion.sample_<name>); these few differ.
_FUNCTION_NAMES = {"dpm_fast": "dpm_fast_function", "dpm_adaptive": "dpm_adaptive_function",
                   "uni_pc": "sample_unipc", "uni_pc_bh2": "sample_unipc_bh2"}
# ddim is KSAMPLER(sample_euler) with random inpainting noise: it reads as euler.
SAMPLER_OF_FUNCTION: dict[str, str] = {
    _FUNCTION_NAMES.get(name, f"sample_{name}"): name for name in SAMPLERS if name != "ddim"}

SUGGESTED = "euler or dpmpp_2m"


def sampler_name_of(sampler_function: object) -> Optional[str]:
    """The table's name for a KSAMPLER's function, None when the table does not know it."""
    return SAMPLER_OF_FUNCTION.get(getattr(sampler_function, "__name__", ""))


def refusal(name: str) -> str:
    """The error for a refused sampler: what it is, why, what to use instead."""
    return (f"sampler '{name}' {SAMPLERS[name].note}, so AMDM cannot drive it one step at a "
            f"time; use {SUGGESTED}")


def markdown_table() -> str:
    """The table as markdown, samplers that behave alike on one row, for the README and
    the node help pages."""
    rows: dict[tuple[str, int, str], list[str]] = {}
    for name, item in SAMPLERS.items():
        rows.setdefault((item.drive, item.evaluations, item.note), []).append(name)
    lines = ["| in the window | model evaluations per step | samplers | why |",
             "|---|---|---|---|"]
    for (drive, evaluations, note), names in rows.items():
        count = "-" if drive == REFUSED else str(evaluations)
        lines.append(f"| {drive} | {count} | {', '.join(names)} | {note} |")
    return "\n".join(lines)
