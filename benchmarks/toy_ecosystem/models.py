"""The toy ecosystem: a base diffusion model and members fine-tuned from it, each
conditioned on (and good at) one aspect of the task, built from ComfyUI's own classes.

Every model is a comfy.model_base.BaseModel holding ComfyUI's openaimodel.UNetModel (a
tiny config, v-prediction, SD1.x's discrete noise schedule), wrapped in a
comfy.model_patcher.ModelPatcher: a MODEL like any loaded checkpoint.

Each ecosystem also holds two noise-level experts, split as Wan 2.2 splits its high- and
low-noise experts: both fine-tuned from the base on every aspect's labels, one on the noise
levels above a boundary, the other on those below it (ExpertPlan).

Several ecosystems are trained, one per seed. Training is deterministic on one machine
but not across CPUs (their float kernels differ), so the trained weights ship with the
repository (SHIPPED_DIR, float16) and are what the benchmark uses by default; retraining
writes to a cache outside the repository, keyed by a hash of everything that determines
the weights. Either way the weights are used at float16 precision, so a retrained
ecosystem on the machine that made the shipped files is the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import task
from ..comfy_setup import comfy_env, setup_comfy

setup_comfy()

import comfy.latent_formats  # noqa: E402  (ComfyUI is importable only after setup_comfy)
import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import comfy.utils  # noqa: E402

logger = logging.getLogger(__name__)

# Bump when the task or the training code changes what the weights mean.
TASK_VERSION = 2

UNET_CONFIG = {
    "image_size": task.GRID,
    "in_channels": task.CHANNELS,
    "out_channels": task.CHANNELS,
    "model_channels": 32,  # GroupNorm(32) needs at least 32 channels
    "num_res_blocks": 1,
    "channel_mult": [1, 1],
    # Cross-attention only at 4x4 and in the middle: conditioning reaches every pixel
    # through the upsampling path, at half the cost of attention at 8x8.
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "context_dim": task.CONTEXT_DIM,
    "num_heads": 4,
    "num_head_channels": -1,
    "legacy": False,
    "adm_in_channels": None,
}


class ToyModelConfig(comfy.supported_models_base.BASE):
    """A supported-model config like SD15's, scaled down: unit latent scale and SD1.x's
    discrete schedule (linear betas 0.00085..0.012, 1000 steps), with v-prediction.

    Why not EPS: with EPS the denoised estimate at sigma_max (14.6) carries the noise
    prediction's error times sigma; after minutes of CPU training that error (MSE 0.02)
    made every sample noise (RMS 1.3 against data of RMS 0.3). V-prediction bounds the
    error at high sigma; discrete EPS and V models share ComfyUI's sigma space."""

    unet_config = UNET_CONFIG
    unet_extra_config: dict = {}
    latent_format = comfy.latent_formats.LatentFormat
    memory_usage_factor = 1.0

    def model_type(self, state_dict: dict, prefix: str = "") -> comfy.model_base.ModelType:
        return comfy.model_base.ModelType.V_PREDICTION


@dataclass(frozen=True)
class TrainingPlan:
    """Everything that determines the trained weights (hashed into the cache key)."""

    base_steps: int = 400
    # Fine-tuning steps per member: measured, the position label is picked up in ~200
    # steps, colour in ~300, shape needs the longest (0.85 after 700 steps, 0.96 after 1400).
    member_steps: tuple[tuple[str, int], ...] = (("position", 300), ("colour", 500), ("shape", 1100))
    batch_size: int = 64
    base_learning_rate: float = 2e-3
    member_learning_rate: float = 3e-3
    # Share of training rows with the empty context, so CFG has an unconditional model.
    empty_context_rate: float = 0.15
    seed: int = 0


# Member name -> the one aspect it is conditioned on. The order is the stack order.
MEMBER_ASPECTS = {"position": "position", "colour": "colour", "shape": "shape"}
BASE_NAME = "base"
HIGH_NOISE, LOW_NOISE = "high_noise", "low_noise"
# In the order they sample: the high-noise expert first.
EXPERTS = (HIGH_NOISE, LOW_NOISE)
# Every model's training seed is plan.seed * 1000 + its index here.
MODEL_NAMES = (BASE_NAME, *MEMBER_ASPECTS, *EXPERTS)


@dataclass(frozen=True)
class ExpertPlan:
    """The noise-level experts (hashed into their weights' key, with the base's plan).

    Wan 2.2 hands over from its high-noise to its low-noise expert where the flow-matching
    sigma crosses 0.875 (T2V): there the noise is 0.875 / 0.125 = 7 times the signal, for
    latents of unit variance. The toy's clean latents have an RMS of 0.315, so the same
    signal-to-noise ratio lies at sigma 7 x 0.315 = 2.20, which the toy's discrete schedule
    reaches at progress 0.41 (percent_to_sigma(0.41) = 2.1999, timestep 590 of 1000). That
    split gives the high-noise expert 8 of 20 normal steps, as Wan 2.2's boundary gives its
    high-noise expert about half of the steps at the shift of ComfyUI's templates (8).
    (Wan's 0.875 read as a fraction of the toy's timesteps would be progress 0.125: 3 of 20
    steps, a boundary far earlier in the denoising than Wan's.) Each expert trains on its
    side of the boundary only."""

    boundary_percent: float = 0.41
    # Fine-tuning steps per expert, comparable with the members' 300 to 1100: measured on
    # ecosystem 1, the two experts that see every label sample every aspect right (joint
    # 1.00) after 600 steps each, alone or handing over at the boundary; after 200 they
    # had not learned the shape (0.33 to 0.60).
    steps: tuple[tuple[str, int], ...] = ((HIGH_NOISE, 600), (LOW_NOISE, 600))
    learning_rate: float = 3e-3


# The trained weights in the repository: SHIPPED_DIR/ecosystem_<seed>/<model>.safetensors.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
# safetensors metadata key holding the hash of what determined the weights.
PLAN_METADATA_KEY = "toy_ecosystem_plan"


def cache_root() -> Path:
    return comfy_env().cache_dir() / "toy_ecosystem"


def plan_description(plan: TrainingPlan) -> dict:
    task_constants = {"grid": task.GRID, "channels": task.CHANNELS, "context_dim": task.CONTEXT_DIM,
                      "token_scale": task.TOKEN_SCALE, "labels": task.LABEL_COUNTS}
    return {"task_version": TASK_VERSION, "task": task_constants, "unet": UNET_CONFIG, "plan": asdict(plan),
            "members": MEMBER_ASPECTS}


def _digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def plan_key(plan: TrainingPlan) -> str:
    """What the weights mean: the task, the network and the training plan."""
    return _digest(plan_description(plan))


def expert_key(plan: TrainingPlan, experts: ExpertPlan) -> str:
    """What the experts' weights mean: their base's plan and their own."""
    return _digest({**plan_description(plan), "experts": asdict(experts)})


def cache_key(plan: TrainingPlan) -> str:
    """The retraining cache also depends on the torch build that trained the weights."""
    return _digest({**plan_description(plan), "torch": torch.__version__.split("+")[0]})


INITIALISED_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def initialise_weights(module: torch.nn.Module) -> None:
    """torch's default initialisation. ComfyUI's layers skip it (they expect a checkpoint
    to be loaded) and start as uninitialised memory, so training from scratch needs it."""
    for layer in module.modules():
        for layer_type in INITIALISED_LAYERS:
            if isinstance(layer, layer_type):
                layer_type.reset_parameters(layer)
                break


def new_base_model() -> comfy.model_base.BaseModel:
    """The network with uninitialised weights (as ComfyUI builds it before loading)."""
    config = ToyModelConfig(UNET_CONFIG)
    return comfy.model_base.BaseModel(config, model_type=config.model_type({}), device=torch.device("cpu"))


def as_comfy_model(model: comfy.model_base.BaseModel) -> comfy.model_patcher.ModelPatcher:
    """Wrap as a ComfyUI MODEL, placed the way ComfyUI places a loaded checkpoint."""
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


def training_labels(batch_size: int, visible_aspects: tuple[str, ...], empty_rate: float,
                    generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(labels of the rendered images, labels written into the context).

    Only the visible aspects' tokens tell the truth; the other tokens carry independent
    random labels, so the model learns to ignore them and can be given the full request
    at sampling time. A share of rows gets the empty context instead; with no visible
    aspect (the unconditional base) every row does."""
    truth = {aspect: torch.randint(count, (batch_size,), generator=generator)
             for aspect, count in task.LABEL_COUNTS.items()}
    shown = {aspect: truth[aspect] if aspect in visible_aspects
             else torch.randint(task.LABEL_COUNTS[aspect], (batch_size,), generator=generator)
             for aspect in task.ASPECTS}
    empty = torch.rand(batch_size, generator=generator) < empty_rate
    if not visible_aspects:
        empty = torch.ones(batch_size, dtype=torch.bool)
    shown = {aspect: torch.where(empty, -1, labels) for aspect, labels in shown.items()}
    return truth, shown


def v_prediction_loss(model: comfy.model_base.BaseModel, clean: torch.Tensor, context: torch.Tensor,
                      generator: torch.Generator, timesteps: range) -> torch.Tensor:
    """The v-prediction objective at discrete timesteps drawn uniformly from ``timesteps``,
    through ComfyUI's own BaseModel.apply_model (input scaling, timestep mapping,
    V_PREDICTION denoising).

    The network's output error is the denoised error times sqrt(sigma^2 + 1) / sigma
    (sigma_data = 1), so the mean squared output error is the denoised error weighted by
    (sigma^2 + 1) / sigma^2."""
    drawn = timesteps.start + torch.randint(len(timesteps), (clean.shape[0],), generator=generator)
    sigma = model.model_sampling.sigmas[drawn]
    noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=generator)
    denoised = model.apply_model(noisy, sigma, c_crossattn=context)
    weight = (sigma.square() + 1.0) / sigma.square()
    return ((denoised - clean).square().mean(dim=(1, 2, 3)) * weight).mean()


def toy_model_sampling() -> comfy.model_sampling.ModelSamplingDiscrete:
    """The toy models' noise schedule, as ComfyUI builds it for a BaseModel."""
    config = ToyModelConfig(UNET_CONFIG)
    return comfy.model_base.model_sampling(config, config.model_type({}))


def expert_timesteps(model_sampling: comfy.model_sampling.ModelSamplingDiscrete,
                     experts: ExpertPlan) -> dict[str, range]:
    """Each expert's training timesteps: the high-noise expert's sigmas lie above the
    boundary's, the low-noise expert's at or below it, so that at sampling time a step
    whose progress lies before boundary_percent (the pack's window rule) is the
    high-noise expert's."""
    sigmas = model_sampling.sigmas  # increasing with the timestep
    low = int((sigmas <= model_sampling.percent_to_sigma(experts.boundary_percent)).sum())
    return {HIGH_NOISE: range(low, len(sigmas)), LOW_NOISE: range(0, low)}


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: on which labels and timesteps, for how long."""

    visible_aspects: tuple[str, ...]  # none: the unconditional base
    timesteps: range
    steps: int
    learning_rate: float


def train(model: comfy.model_base.BaseModel, recipe: Recipe, plan: TrainingPlan, seed: int) -> None:
    """Train in place."""
    visible, steps = recipe.visible_aspects, recipe.steps
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    # Cosine decay to zero: the last steps average out the noise of small batches.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    started = time.monotonic()
    for step in range(steps):
        truth, shown = training_labels(plan.batch_size, visible, plan.empty_context_rate, generator)
        loss = v_prediction_loss(model, task.render_labels(truth), task.encode_labels(shown), generator,
                                 recipe.timesteps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, steps // 4) == 0:
            logger.info("training on %s: step %d/%d, loss %.4f (%.0f s)", ", ".join(visible) or "no labels",
                        step + 1, steps, loss.item(), time.monotonic() - started)
    model.eval()


def save_atomically(state_dict: dict[str, torch.Tensor], path: Path, key: str) -> None:
    """Write to a temporary file in the same directory, then rename: a reader never sees
    a partial file, and concurrent writers of the same deterministic weights are harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state_dict.items()}, str(temporary),
                                metadata={PLAN_METADATA_KEY: key})
    os.replace(temporary, path)


def load_weights(model: comfy.model_base.BaseModel, path: Path, key: str) -> None:
    """Load weights written under ``key`` (plan_key or expert_key), at float16 precision
    (see the module docstring)."""
    state_dict, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    written_for = (metadata or {}).get(PLAN_METADATA_KEY)
    if written_for != key:
        raise RuntimeError(f"{path} holds weights of another training plan ({written_for}, expected "
                           f"{key}): the task or the training changed since they were "
                           f"made; run with --retrain (and --ship-weights to replace them)")
    model.diffusion_model.load_state_dict({k: v.half().float() for k, v in state_dict.items()})


def recipe(name: str, plan: TrainingPlan, experts: ExpertPlan) -> Recipe:
    model_sampling = toy_model_sampling()
    every_timestep = range(len(model_sampling.sigmas))
    if name == BASE_NAME:
        return Recipe((), every_timestep, plan.base_steps, plan.base_learning_rate)
    if name in MEMBER_ASPECTS:
        return Recipe((MEMBER_ASPECTS[name],), every_timestep, dict(plan.member_steps)[name],
                      plan.member_learning_rate)
    return Recipe(task.ASPECTS, expert_timesteps(model_sampling, experts)[name], dict(experts.steps)[name],
                  experts.learning_rate)


def weights_key(name: str, plan: TrainingPlan, experts: ExpertPlan) -> str:
    return expert_key(plan, experts) if name in EXPERTS else plan_key(plan)


def load_or_train(name: str, plan: TrainingPlan, experts: ExpertPlan, directory: Path,
                  start_from: dict[str, torch.Tensor] | None) -> comfy.model_base.BaseModel:
    path = directory / f"{name}.safetensors"
    key = weights_key(name, plan, experts)
    model = new_base_model()
    if path.is_file():
        load_weights(model, path, key)
        logger.info("loaded %s from %s", name, path)
        return model
    training = recipe(name, plan, experts)
    # Each model's own seed, so a missing one retrains to the same weights alone.
    seed = plan.seed * 1000 + MODEL_NAMES.index(name)
    logger.info("training %s of ecosystem %d (%d steps) -> %s", name, plan.seed, training.steps, path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if start_from is None:
            initialise_weights(model.diffusion_model)
        else:
            model.diffusion_model.load_state_dict(start_from)
        train(model, training, plan, seed)
    save_atomically(model.diffusion_model.state_dict(), path, key)
    load_weights(model, path, key)
    return model


@dataclass
class Ecosystem:
    """The trained models of one seed as ComfyUI MODELs; members in stack order."""

    plan: TrainingPlan  # its seed is the ecosystem's
    base: comfy.model_patcher.ModelPatcher
    members: dict[str, comfy.model_patcher.ModelPatcher]
    experts: dict[str, comfy.model_patcher.ModelPatcher]  # in EXPERTS order
    weights_dir: Path
    expert_plan: ExpertPlan

    @property
    def seed(self) -> int:
        return self.plan.seed


def shipped_dir(seed: int) -> Path:
    return SHIPPED_DIR / f"ecosystem_{seed}"


def shipped_model(directory: Path, name: str, plan: TrainingPlan, experts: ExpertPlan) -> comfy.model_base.BaseModel:
    model = new_base_model()
    load_weights(model, directory / f"{name}.safetensors", weights_key(name, plan, experts))
    return model


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def expert_cache_dir(base_weights: dict[str, torch.Tensor], plan: TrainingPlan, experts: ExpertPlan) -> Path:
    """Where experts trained from these base weights are cached: the shipped base and a
    base retrained elsewhere give other experts."""
    key = {"base": weights_digest(base_weights), "experts": expert_key(plan, experts),
           "torch": torch.__version__.split("+")[0]}
    return cache_root() / "experts" / _digest(key)


def load_ecosystem(seed: int, retrain: bool = False, plan: TrainingPlan = TrainingPlan(),
                   experts: ExpertPlan = ExpertPlan(), retrain_experts: bool = False) -> Ecosystem:
    """The ecosystem of ``seed``: the shipped weights; with ``retrain`` the weights trained
    on this machine; with ``retrain_experts`` the shipped base and members, and experts
    trained on this machine from that base. Trained weights are cached; whatever is missing
    is trained, deterministically: the same plans give the same weights on the same torch
    build and machine. The members are fine-tuned from the base as trained (float32); the
    experts from the base as every row uses it (float16), so that shipped experts are
    fine-tuned from the shipped base whichever machine trains them (a base retrained on
    another CPU differs from the shipped one: up to 0.002 in a weight, measured)."""
    plan = replace(plan, seed=seed)
    if retrain:
        directory = cache_root() / cache_key(plan)
        models = {BASE_NAME: load_or_train(BASE_NAME, plan, experts, directory, start_from=None)}
        base_weights = comfy.utils.load_torch_file(str(directory / f"{BASE_NAME}.safetensors"))
        models.update({name: load_or_train(name, plan, experts, directory, start_from=base_weights)
                       for name in MEMBER_ASPECTS})
    else:
        directory = shipped_dir(seed)
        if not directory.is_dir():
            raise RuntimeError(f"no shipped weights for toy ecosystem {seed} in {directory}: "
                               f"run with --retrain")
        models = {name: shipped_model(directory, name, plan, experts) for name in (BASE_NAME, *MEMBER_ASPECTS)}
    if retrain or retrain_experts:
        start = models[BASE_NAME].diffusion_model.state_dict()
        expert_directory = expert_cache_dir(start, plan, experts)
        models.update({name: load_or_train(name, plan, experts, expert_directory, start_from=start)
                       for name in EXPERTS})
    else:
        models.update({name: shipped_model(directory, name, plan, experts) for name in EXPERTS})
    patchers = {name: as_comfy_model(model) for name, model in models.items()}
    return Ecosystem(plan, patchers[BASE_NAME], {name: patchers[name] for name in MEMBER_ASPECTS},
                     {name: patchers[name] for name in EXPERTS}, directory, experts)


def ship_weights(ecosystem: Ecosystem, names: tuple[str, ...] = MODEL_NAMES) -> Path:
    """Copy the named models of a retrained ecosystem into the repository, as float16
    (what is used anyway)."""
    directory = shipped_dir(ecosystem.seed)
    models = {BASE_NAME: ecosystem.base, **ecosystem.members, **ecosystem.experts}
    for name in names:
        state_dict = models[name].model.diffusion_model.state_dict()
        save_atomically({k: v.half() for k, v in state_dict.items()}, directory / f"{name}.safetensors",
                        weights_key(name, ecosystem.plan, ecosystem.expert_plan))
    return directory


def request_conditioning(context: torch.Tensor) -> list:
    """A ComfyUI CONDITIONING list built without CLIP: one entry, the context tensor as
    cross-attention, no extra options."""
    return [[context, {}]]
