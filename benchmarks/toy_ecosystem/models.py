"""The toy ecosystem: a base diffusion model and members fine-tuned from it, each
conditioned on (and good at) one aspect of the task, built from ComfyUI's own classes.

Every model is a comfy.model_base.BaseModel holding ComfyUI's openaimodel.UNetModel (a
tiny config, v-prediction, SD1.x's discrete noise schedule), wrapped in a
comfy.model_patcher.ModelPatcher: a MODEL like any loaded checkpoint.

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


def training_labels(batch_size: int, visible_aspect: str | None, empty_rate: float,
                    generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(labels of the rendered images, labels written into the context).

    Only the visible aspect's token tells the truth; the other tokens carry independent
    random labels, so the model learns to ignore them and can be given the full request
    at sampling time. A share of rows gets the empty context instead."""
    truth = {aspect: torch.randint(count, (batch_size,), generator=generator)
             for aspect, count in task.LABEL_COUNTS.items()}
    shown = {aspect: truth[aspect] if aspect == visible_aspect
             else torch.randint(task.LABEL_COUNTS[aspect], (batch_size,), generator=generator)
             for aspect in task.ASPECTS}
    empty = torch.rand(batch_size, generator=generator) < empty_rate
    if visible_aspect is None:
        empty = torch.ones(batch_size, dtype=torch.bool)
    shown = {aspect: torch.where(empty, -1, labels) for aspect, labels in shown.items()}
    return truth, shown


def v_prediction_loss(model: comfy.model_base.BaseModel, clean: torch.Tensor,
                      context: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The v-prediction objective at uniformly drawn discrete timesteps, through ComfyUI's
    own BaseModel.apply_model (input scaling, timestep mapping, V_PREDICTION denoising).

    The network's output error is the denoised error times sqrt(sigma^2 + 1) / sigma
    (sigma_data = 1), so the mean squared output error is the denoised error weighted by
    (sigma^2 + 1) / sigma^2."""
    sigmas = model.model_sampling.sigmas
    sigma = sigmas[torch.randint(len(sigmas), (clean.shape[0],), generator=generator)]
    noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=generator)
    denoised = model.apply_model(noisy, sigma, c_crossattn=context)
    weight = (sigma.square() + 1.0) / sigma.square()
    return ((denoised - clean).square().mean(dim=(1, 2, 3)) * weight).mean()


def train(model: comfy.model_base.BaseModel, visible_aspect: str | None, steps: int,
          learning_rate: float, plan: TrainingPlan, seed: int) -> None:
    """Train in place; visible_aspect None trains the unconditional base."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=learning_rate, weight_decay=0.0)
    # Cosine decay to zero: the last steps average out the noise of small batches.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    started = time.monotonic()
    for step in range(steps):
        truth, shown = training_labels(plan.batch_size, visible_aspect, plan.empty_context_rate, generator)
        loss = v_prediction_loss(model, task.render_labels(truth), task.encode_labels(shown), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, steps // 4) == 0:
            logger.info("training %s: step %d/%d, loss %.4f (%.0f s)", visible_aspect or BASE_NAME,
                        step + 1, steps, loss.item(), time.monotonic() - started)
    model.eval()


def save_atomically(state_dict: dict[str, torch.Tensor], path: Path, plan: TrainingPlan) -> None:
    """Write to a temporary file in the same directory, then rename: a reader never sees
    a partial file, and concurrent writers of the same deterministic weights are harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state_dict.items()}, str(temporary),
                                metadata={PLAN_METADATA_KEY: plan_key(plan)})
    os.replace(temporary, path)


def load_weights(model: comfy.model_base.BaseModel, path: Path, plan: TrainingPlan) -> None:
    """Load weights written for ``plan``, at float16 precision (see the module docstring)."""
    state_dict, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    written_for = (metadata or {}).get(PLAN_METADATA_KEY)
    if written_for != plan_key(plan):
        raise RuntimeError(f"{path} holds weights of another training plan ({written_for}, expected "
                           f"{plan_key(plan)}): the task or the training changed since they were "
                           f"made; run with --retrain (and --ship-weights to replace them)")
    model.diffusion_model.load_state_dict({k: v.half().float() for k, v in state_dict.items()})


def load_or_train(name: str, plan: TrainingPlan, directory: Path,
                  start_from: dict[str, torch.Tensor] | None) -> comfy.model_base.BaseModel:
    path = directory / f"{name}.safetensors"
    model = new_base_model()
    if path.is_file():
        load_weights(model, path, plan)
        logger.info("loaded %s from %s", name, path)
        return model
    visible_aspect = None if name == BASE_NAME else MEMBER_ASPECTS[name]
    steps = plan.base_steps if start_from is None else dict(plan.member_steps)[name]
    learning_rate = plan.base_learning_rate if start_from is None else plan.member_learning_rate
    # Each model's own seed, so a missing member retrains to the same weights alone.
    seed = plan.seed * 1000 + list((BASE_NAME, *MEMBER_ASPECTS)).index(name)
    logger.info("training %s of ecosystem %d (%d steps) -> %s", name, plan.seed, steps, path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if start_from is None:
            initialise_weights(model.diffusion_model)
        else:
            model.diffusion_model.load_state_dict(start_from)
        train(model, visible_aspect, steps, learning_rate, plan, seed)
    save_atomically(model.diffusion_model.state_dict(), path, plan)
    load_weights(model, path, plan)
    return model


@dataclass
class Ecosystem:
    """The trained models of one seed as ComfyUI MODELs; members in stack order."""

    plan: TrainingPlan  # its seed is the ecosystem's
    base: comfy.model_patcher.ModelPatcher
    members: dict[str, comfy.model_patcher.ModelPatcher]
    weights_dir: Path

    @property
    def seed(self) -> int:
        return self.plan.seed


def shipped_dir(seed: int) -> Path:
    return SHIPPED_DIR / f"ecosystem_{seed}"


def load_ecosystem(seed: int, retrain: bool = False, plan: TrainingPlan = TrainingPlan()) -> Ecosystem:
    """The ecosystem of ``seed``: the shipped weights, or with ``retrain`` the weights
    trained on this machine (cached; whatever is missing is trained, deterministically:
    the same plan gives the same weights on the same torch build and machine). Members
    are fine-tuned from the base as trained (float32), not from its float16 copy."""
    plan = replace(plan, seed=seed)
    if not retrain:
        directory = shipped_dir(seed)
        if not directory.is_dir():
            raise RuntimeError(f"no shipped weights for toy ecosystem {seed} in {directory}: "
                               f"run with --retrain")
        models = {}
        for name in (BASE_NAME, *MEMBER_ASPECTS):
            models[name] = new_base_model()
            load_weights(models[name], directory / f"{name}.safetensors", plan)
        return Ecosystem(plan, as_comfy_model(models[BASE_NAME]),
                         {name: as_comfy_model(models[name]) for name in MEMBER_ASPECTS}, directory)
    directory = cache_root() / cache_key(plan)
    base = load_or_train(BASE_NAME, plan, directory, start_from=None)
    base_weights = comfy.utils.load_torch_file(str(directory / f"{BASE_NAME}.safetensors"))
    members = {name: as_comfy_model(load_or_train(name, plan, directory, start_from=base_weights))
               for name in MEMBER_ASPECTS}
    return Ecosystem(plan, as_comfy_model(base), members, directory)


def ship_weights(ecosystem: Ecosystem) -> Path:
    """Copy a retrained ecosystem into the repository, as float16 (what is used anyway)."""
    directory = shipped_dir(ecosystem.seed)
    for name, model in {BASE_NAME: ecosystem.base, **ecosystem.members}.items():
        state_dict = model.model.diffusion_model.state_dict()
        save_atomically({k: v.half() for k, v in state_dict.items()}, directory / f"{name}.safetensors",
                        ecosystem.plan)
    return directory


def request_conditioning(context: torch.Tensor) -> list:
    """A ComfyUI CONDITIONING list built without CLIP: one entry, the context tensor as
    cross-attention, no extra options."""
    return [[context, {}]]
