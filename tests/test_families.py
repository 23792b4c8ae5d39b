"""AMDM on the model families people run today: SDXL (eps and v-prediction zsnr), SD3.5, Flux
(dev and schnell), Wan 2.1 text-to-video with 5D latents.

Tiny random models of each family (support/family_models.py), loaded the way ComfyUI loads
them; stacks, schedules and sampling go through the pack's nodes, and every reference is one of
ComfyUI's own nodes (KSampler, SamplerCustomAdvanced with CFGGuider).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import comfy.samplers
import pytest
import torch

from support import family_models
from support.comfy_env import node_class, run_node

SEED = 4321
STEPS = 4
SCHEDULER = "simple"


@dataclass(frozen=True)
class Case:
    """How a family is sampled here: its text-encoder stand-in, latent node and guidance."""

    family: str
    clip_type: str  # CLIPLoader type of the CLIP-L stand-in
    latent_node: str
    cfg: float
    flux_guidance: Optional[float] = None  # FluxGuidance on the positive prompts

    def latent(self, batch: int = 1) -> dict:
        size = {"width": 64, "height": 64, "batch_size": batch}
        if self.latent_node == "EmptyHunyuanLatentVideo":
            size["length"] = 5  # two latent frames
        return run_node(self.latent_node, **size)[0]


CASES = {case.family: case for case in (
    Case("sdxl", "stable_diffusion", "EmptyLatentImage", cfg=5.0),
    Case("sdxl_vpred_zsnr", "stable_diffusion", "EmptyLatentImage", cfg=5.0),
    Case("sd3", "sd3", "EmptySD3LatentImage", cfg=4.5),
    Case("flux_dev", "sd3", "EmptySD3LatentImage", cfg=1.0, flux_guidance=3.5),
    Case("flux_schnell", "sd3", "EmptySD3LatentImage", cfg=1.0),
    Case("wan21", "sd3", "EmptyHunyuanLatentVideo", cfg=5.0),
)}
# What ComfyUI makes of each family's files.
EXPECTED = {
    "sdxl": ("SDXL", "EPS", "SDXL"),
    "sdxl_vpred_zsnr": ("SDXL", "V_PREDICTION", "SDXL"),
    "sd3": ("SD3", "FLOW", "SD3"),
    "flux_dev": ("Flux", "FLUX", "Flux"),
    "flux_schnell": ("FluxSchnell", "FLOW", "Flux"),
    "wan21": ("WAN21_T2V", "FLOW", "Wan21"),
}


@dataclass
class Member:
    model: Any
    positive: list
    negative: list
    cfg: float


class Kit:
    """One family's tiny models as members: model i with prompt i, the family's cfg."""

    def __init__(self, case: Case, models: list, encode: Callable[[str], list]):
        self.case = case
        self.models = models
        positive = [encode("a red cube on the left"), encode("a blue ball on the right")]
        if case.flux_guidance is not None:
            positive = [run_node("FluxGuidance", conditioning=p, guidance=case.flux_guidance)[0]
                        for p in positive]
        negative = encode("")
        self.members = [Member(model, p, negative, case.cfg) for model, p in zip(models, positive)]


@pytest.fixture(scope="module")
def kit(pack, load_family_model, family_clip) -> Callable[[str], Kit]:
    kits: dict[str, Kit] = {}
    encoded: dict[tuple[str, str], list] = {}

    def encode(clip_type: str, text: str) -> list:
        if (clip_type, text) not in encoded:
            encoded[clip_type, text] = run_node("CLIPTextEncode", clip=family_clip(clip_type), text=text)[0]
        return encoded[clip_type, text]

    def get(family: str) -> Kit:
        if family not in kits:
            case = CASES[family]
            models = [load_family_model(name) for name in family_models.family_models(family)]
            kits[family] = Kit(case, models, lambda text: encode(case.clip_type, text))
        return kits[family]

    return get


def stack(*members: Member, weights: tuple[float, ...] = ()) -> tuple:
    """A ModelStack chain, one node per member."""
    chain: Optional[tuple] = None
    for index, member in enumerate(members):
        inputs = dict(model=member.model, positive=member.positive, negative=member.negative,
                      cfg=member.cfg, weight=weights[index] if weights else 1.0, deviation=1.0)
        if chain is not None:
            inputs["stack"] = chain
        chain = run_node("ModelStack", **inputs)[0]
    return chain


def schedule(**overrides: Any) -> Any:
    """An AggregationSchedule node with its defaults, except ``overrides``."""
    required = node_class("AggregationSchedule").INPUT_TYPES()["required"]
    inputs = {name: spec[1]["default"] for name, spec in required.items()}
    return run_node("AggregationSchedule", **{**inputs, **overrides})[0]


def amdm(chain: tuple, latent: dict, amdm_schedule: Any = None, sampler: str = "euler") -> torch.Tensor:
    inputs = dict(stack=chain, seed=SEED, steps=STEPS, sampler_name=sampler, scheduler=SCHEDULER,
                  latent_image=latent, denoise=1.0)
    if amdm_schedule is not None:
        inputs["schedule"] = amdm_schedule
    return run_node("AMDMSampler", **inputs)[0]["samples"]


def ksampler(member: Member, latent: dict, sampler: str = "euler") -> torch.Tensor:
    return run_node("KSampler", model=member.model, seed=SEED, steps=STEPS, cfg=member.cfg,
                    sampler_name=sampler, scheduler=SCHEDULER, positive=member.positive,
                    negative=member.negative, latent_image=latent, denoise=1.0)[0]["samples"]


class Evaluations:
    """Counts the evaluations of one model (ComfyUI's unet function wrapper on a clone) and
    records the sigma of each (the wrapper sees sigma; the model maps it to its timestep)."""

    def __init__(self, model: Any):
        self.sigmas: list[float] = []
        self.model = model.clone()

        def wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
            self.sigmas.append(float(args["timestep"][0]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        self.model.set_model_unet_function_wrapper(wrapper)

    def steps(self) -> list[float]:
        """The sigma of every sampler step (cond and uncond of a step share a sigma)."""
        return [t for i, t in enumerate(self.sigmas) if i == 0 or t != self.sigmas[i - 1]]


def watched(member: Member) -> tuple[Member, Evaluations]:
    evaluations = Evaluations(member.model)
    return Member(evaluations.model, member.positive, member.negative, member.cfg), evaluations


def relative_distance(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return float((a - b).norm() / scale.norm())


# ----------------------------------------------------------------------------- the fixtures

@pytest.mark.parametrize("family", list(CASES))
def test_comfyui_recognises_each_tiny_family(kit, family_files, family: str) -> None:
    config_class, model_type, latent_format = EXPECTED[family]
    for model in kit(family).models:
        assert type(model.model.model_config).__name__ == config_class
        assert model.model.model_type.name == model_type
        assert type(model.get_model_object("latent_format")).__name__ == latent_format
    for name in family_models.family_models(family):
        if family_models.stock_loader_accepts(name):  # the stock node detects them by itself
            node, file_input = family_models.STOCK_LOADER_NODES[family_models.MODELS[name].family.folder]
            options = {"weight_dtype": "default"} if node == "UNETLoader" else {}
            loaded = run_node(node, **{file_input: name}, **options)[0]
            assert type(loaded.model.model_config).__name__ == config_class
    if family == "sdxl_vpred_zsnr":
        assert kit(family).models[0].model.model_config.sampling_settings.get("zsnr") is True


# ----------------------------------------------------------------------------- one member

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("family", list(CASES))
def test_one_member_is_ksampler_bit_for_bit(kit, family: str, sampler: str) -> None:
    family_kit = kit(family)
    member = family_kit.members[0]
    latent = family_kit.case.latent()
    assert torch.equal(amdm(stack(member), latent, sampler=sampler), ksampler(member, latent, sampler))


# ----------------------------------------------------------------------------- two members

@pytest.mark.parametrize("family", [f for f in CASES if len(family_models.family_models(f)) == 2])
def test_second_member_pulls_the_result_towards_its_own(kit, family: str) -> None:
    """Window over every step, shared noise, linear aggregation, averaged guidance: as member
    2's weight grows the target's trajectory becomes member 2's, so the result moves from
    what the target alone produces to what member 2 alone produces."""
    family_kit = kit(family)
    target, other = family_kit.members
    latent = family_kit.case.latent()
    target_alone, other_alone = ksampler(target, latent), ksampler(other, latent)
    window_everywhere = schedule(start_percent=0.0, end_percent=1.0, aggregation="linear",
                                 deviation_mode="none", noise_mode="shared", guidance="averaged")
    results = {weight: amdm(stack(target, other, weights=(1.0, weight)), latent, window_everywhere)
               for weight in (1.0, 100.0)}
    default = amdm(stack(target, other), latent)

    for result in (*results.values(), default):
        assert result.shape == target_alone.shape
        assert torch.isfinite(result).all()
    scale = target_alone - other_alone
    towards_other = {w: relative_distance(r, other_alone, scale) for w, r in results.items()}
    # Equal weights land about halfway; weight 100 leaves about 1/101 of the way.
    assert 0.3 < towards_other[1.0] < 0.7
    assert towards_other[100.0] < 0.03
    # The default schedule (first 40 % of the steps) aggregates too.
    assert relative_distance(default, target_alone, scale) > 0.01


# ----------------------------------------------------------------------------- AMDMGuider

# (family, ModelSampling node and inputs applied to both members)
PATCHED_SAMPLING = {
    "sd3": ("ModelSamplingSD3", {"shift": 6.0}),
    "flux_dev": ("ModelSamplingFlux", {"max_shift": 1.15, "base_shift": 0.5, "width": 64, "height": 64}),
    "wan21": ("ModelSamplingSD3", {"shift": 5.0}),
}
CUSTOM_SIGMAS = torch.tensor([1.0, 0.95, 0.85, 0.7, 0.5, 0.3, 0.0])


def steps_above(sigmas: torch.Tensor, boundary: float) -> int:
    return sum(1 for sigma in sigmas[:-1].tolist() if sigma > boundary)


@pytest.mark.parametrize("family", list(PATCHED_SAMPLING))
def test_guider_follows_model_sampling_patch_with_custom_sigmas(kit, family: str) -> None:
    """SamplerCustomAdvanced with hand-written sigmas: one member equals CFGGuider bit for bit;
    with two, member 2 is evaluated on exactly the steps that the patched model_sampling puts
    in the window (end_percent 0.5), which the unpatched one would not."""
    family_kit = kit(family)
    node, inputs = PATCHED_SAMPLING[family]
    patched = [Member(run_node(node, model=m.model, **inputs)[0], m.positive, m.negative, m.cfg)
               for m in family_kit.members]
    target = patched[0]
    latent = family_kit.case.latent()
    noise = run_node("RandomNoise", noise_seed=SEED)[0]
    sampler = run_node("KSamplerSelect", sampler_name="euler")[0]

    def custom_advanced(guider: Any) -> torch.Tensor:
        return run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler,
                        sigmas=CUSTOM_SIGMAS, latent_image=latent)[0]["samples"]

    reference = custom_advanced(run_node("CFGGuider", model=target.model, positive=target.positive,
                                         negative=target.negative, cfg=target.cfg)[0])
    alone = custom_advanced(run_node("AMDMGuider", stack=stack(target))[0])
    assert torch.equal(alone, reference)

    other, evaluations = watched(patched[1])
    half = schedule(start_percent=0.0, end_percent=0.5)
    result = custom_advanced(run_node("AMDMGuider", stack=stack(target, other), schedule=half)[0])
    assert torch.isfinite(result).all()
    assert not torch.allclose(result, reference)

    window = steps_above(CUSTOM_SIGMAS, target.model.get_model_object("model_sampling").percent_to_sigma(0.5))
    unpatched = steps_above(CUSTOM_SIGMAS, family_kit.models[0].get_model_object("model_sampling").percent_to_sigma(0.5))
    assert window != unpatched
    assert len(evaluations.steps()) == window


# ----------------------------------------------------------------------------- ecosystems

CROSS_FAMILY = [("sdxl", "sd3"), ("sd3", "flux_dev"), ("flux_dev", "wan21"), ("wan21", "sdxl"),
                ("sdxl_vpred_zsnr", "flux_schnell")]


def assert_refused_before_evaluation(members: list[Member], latent: dict) -> str:
    """AMDMSampler refuses the stack; returns the message. No member was evaluated."""
    logs = [watched(member) for member in members]
    with pytest.raises(ValueError) as refusal:
        amdm(stack(*(m for m, _ in logs)), latent)
    assert [len(evaluations.sigmas) for _, evaluations in logs] == [0] * len(members)
    message = str(refusal.value)
    assert "member 2" in message
    return message


@pytest.mark.parametrize("families", CROSS_FAMILY, ids="+".join)
def test_cross_family_stacks_are_refused_before_any_evaluation(kit, families: tuple[str, str]) -> None:
    target, other = (kit(family).members[0] for family in families)
    assert_refused_before_evaluation([target, other], kit(families[0]).case.latent())


def test_sd15_with_sdxl_is_refused_before_any_evaluation(kit, sd15, encode) -> None:
    model, clip, _ = sd15
    sd15_member = Member(model, encode(clip, "a red cube"), encode(clip, ""), 5.0)
    message = assert_refused_before_evaluation([sd15_member, kit("sdxl").members[0]],
                                               CASES["sdxl"].latent())
    assert "latent format" in message


def test_zsnr_with_non_zsnr_is_refused_saying_what_to_change(kit) -> None:
    message = assert_refused_before_evaluation(
        [kit("sdxl").members[0], kit("sdxl_vpred_zsnr").members[0]], CASES["sdxl"].latent())
    assert "ModelSamplingDiscrete" in message


def shifted(member: Member, node: str, **inputs: Any) -> Member:
    return Member(run_node(node, model=member.model, **inputs)[0], member.positive, member.negative, member.cfg)


def shift_pair(kit, pair: str) -> tuple[Member, Member, Case]:
    """Target, member 2 and the latent's family of a pair that differs only in shift."""
    sd3, flux, wan = kit("sd3").members, kit("flux_dev").members, kit("wan21").members
    return {
        "sd3 shift 3 + shift 6": (sd3[0], shifted(sd3[1], "ModelSamplingSD3", shift=6.0), CASES["sd3"]),
        "flux dev + schnell": (flux[0], kit("flux_schnell").members[0], CASES["flux_dev"]),
        "wan shift 5 + shift 8": (shifted(wan[0], "ModelSamplingSD3", shift=5.0),
                                  shifted(wan[1], "ModelSamplingSD3", shift=8.0), CASES["wan21"]),
    }[pair]


@pytest.mark.parametrize("pair", ["sd3 shift 3 + shift 6", "flux dev + schnell", "wan shift 5 + shift 8"])
def test_flow_members_differing_only_in_shift_are_one_ecosystem(kit, pair: str) -> None:
    """A shift changes only a flow model's schedule: the run uses the target's sigmas, and
    member 2 is evaluated at exactly those."""
    target, other, case = shift_pair(kit, pair)
    latent = case.latent()
    other, evaluations = watched(other)

    result = amdm(stack(target, other), latent, schedule(start_percent=0.0, end_percent=1.0))

    assert torch.isfinite(result).all()
    assert not torch.allclose(result, ksampler(target, latent))
    target_sigmas = comfy.samplers.calculate_sigmas(target.model.get_model_object("model_sampling"),
                                                    SCHEDULER, STEPS)
    assert evaluations.steps() == pytest.approx(target_sigmas[:-1].tolist(), rel=1e-6)


# ----------------------------------------------------------------------------- video batch

def test_wan_video_latent_with_batch_of_two(kit) -> None:
    family_kit = kit("wan21")
    target, other = family_kit.members
    latent = family_kit.case.latent(batch=2)
    assert latent["samples"].dim() == 5 and latent["samples"].shape[0] == 2

    target_alone = ksampler(target, latent)
    assert torch.equal(amdm(stack(target), latent), target_alone)
    result = amdm(stack(target, other), latent)
    assert result.shape == target_alone.shape
    assert torch.isfinite(result).all()
    assert not torch.allclose(result[0], result[1])
    for item in range(2):  # every item of the batch was aggregated
        assert not torch.allclose(result[item], target_alone[item])
