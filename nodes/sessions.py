"""A member's sampling session: ComfyUI's CFGGuider.sample split into prepare and release.

ComfyUI samples one model per CFGGuider.sample call: it copies the conds and registers their
hooks, loads the model and the conds' models (ControlNet, GLIGEN), processes the conds for
the latent, runs the sampler, and undoes all of it. A run of several members needs several
such states alive at once, opened and closed in any order (an expert that hands over is
released while the next one runs). MemberSession does what those calls do, in the same
order, as three explicit steps: prepare (everything before the sampler), the sampler calls
in between (``run``), release (everything after, in reverse). ComfyUI's own
Guider_DualModel prepares its second model the same way.

One difference from CFGGuider.sample: wrappers around a whole sampling run (OUTER_SAMPLE,
SAMPLER_SAMPLE: EasyCache, context windows) have no run of one member to wrap where members
aggregate; a member that carries one is refused there before sampling
(``whole_run_wrappers``). A member alone in a stage of a handoff is not a session: it runs
ComfyUI's own CFGGuider.sample, wrappers included, as a KSamplerAdvanced stage does.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers

from . import compat

logger = logging.getLogger(__name__)

Callback = Callable[[dict], None]


def load_device(patcher: Any) -> torch.device:
    """Where the MODEL is evaluated (cpu:N is the one CPU)."""
    device = torch.device(patcher.load_device)
    return torch.device("cpu") if device.type == "cpu" else device


def _patchers(guider: Any) -> list[Any]:
    """The patchers a guider's evaluation runs on: its model's, and the per-device clones
    ComfyUI's multi-GPU sampling prepared for it."""
    return [guider.model_patcher, *compat.multigpu_clones(guider)]


def _twins(a: Any, b: Any) -> bool:
    """Clones of one module with the same weights and object patches: when one is loaded,
    the other needs no load, only to become the module's current patcher."""
    return a.model is b.model and a.object_patches.keys() == b.object_patches.keys() and \
        all(a.object_patches[k] is b.object_patches[k] for k in a.object_patches) and \
        bool(a.clone_has_same_weights(b))


def load_together(guiders: Sequence[Any], memory_required: int, minimum_memory_required: int) -> None:
    """Load the guiders' models (and the models their conds need) in one call if any was
    evicted, reserving what ComfyUI's own sampling prepare reserves for all of them, so that
    none evicts another; then make each patcher the current one of its torch module (clones
    of one checkpoint share the module, and its current_patcher decides whose hooks and
    patches apply)."""
    patchers = [p for guider in guiders for p in (*_patchers(guider), *guider.loaded_models)]
    # A LoadedModel whose patcher was garbage-collected lists None until ComfyUI cleans up.
    loaded = [p for p in comfy.model_management.loaded_models() if p is not None]
    if any(p not in loaded and not any(_twins(p, q) for q in loaded) for p in patchers):
        comfy.model_management.load_models_gpu(patchers, memory_required=memory_required,
                                               minimum_memory_required=minimum_memory_required)
    for guider in guiders:
        for patcher in _patchers(guider):
            if patcher.model.current_patcher is not patcher:
                patcher.pre_run()


def estimate_memory(guider: Any, shape: Sequence[int]) -> tuple[int, int]:
    """What ComfyUI reserves when it loads this guider's model for latents of ``shape``
    (conds' extra models, a ControlNet's inference memory included)."""
    patcher, conds = guider.model_patcher, guider.original_conds
    memory, minimum = comfy.sampler_helpers.estimate_memory(patcher, shape, conds)
    _, inference_memory = comfy.sampler_helpers.get_additional_models(conds, patcher.model_dtype())
    return memory + inference_memory, minimum + inference_memory


def whole_run_wrappers(patcher: Any) -> list[str]:
    """The keys of the MODEL's wrappers around a whole sampling run."""
    keys = []
    for wrapper_type in (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
                         comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE):
        keys += [str(key) for key in patcher.wrappers.get(wrapper_type, {})]
        keys += [str(key) for key in patcher.model_options.get("transformer_options", {})
                 .get("wrappers", {}).get(wrapper_type, {})]
    return keys


class MemberSession:
    """One member's conds, hooks, models and sampler state, from prepare to release.

    ``guider`` is a CFGGuider of the member (on a clone of its MODEL, so that hooks it
    registers never touch another member's patcher); the session fills in what
    CFGGuider.sample would while it runs, so that ComfyUI's sampler calls (through
    KSamplerX0Inpaint, as KSAMPLER.sample builds it) evaluate the member as ComfyUI does.
    The member steps on its own model's device.
    """

    def __init__(self, guider: Any, label: str):
        self.guider = guider
        self.label = label
        self.patcher = guider.model_patcher
        self.device = load_device(self.patcher)
        self.prepared = False  # conds copied and hooks registered: release() undoes them
        self.loaded = False  # models loaded and pre_run: release() cleans them up
        self.multigpu_patchers: list[Any] = []

    # --- prepare: CFGGuider.sample, outer_sample, inner_sample and KSAMPLER.sample, up to the sampler

    def prepare(self, noise: torch.Tensor, latent_image: torch.Tensor, sigmas: torch.Tensor,
                denoise_mask: Optional[torch.Tensor], seed: Optional[int]) -> None:
        """Load and condition the member for sampling ``sigmas`` from ``noise`` and
        ``latent_image`` (the stage's), as CFGGuider.sample does before its sampler runs."""
        guider, patcher = self.guider, self.patcher
        conds = {k: [c.copy() for c in v] for k, v in guider.original_conds.items()}
        comfy.samplers.preprocess_conds_hooks(conds)
        self.original_model_options = guider.model_options
        self.original_hook_mode = patcher.hook_mode
        guider.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
        self.prepared = True
        if comfy.samplers.get_total_hook_groups_in_conds(conds) <= 1:
            patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram
        comfy.sampler_helpers.prepare_model_patcher(patcher, conds, guider.model_options)
        comfy.samplers.filter_registered_hooks_on_conds(conds, guider.model_options)

        self.memory_required, self.minimum_memory_required = estimate_memory(guider, noise.shape)
        guider.inner_model, guider.conds, guider.loaded_models = comfy.sampler_helpers.prepare_sampling(
            patcher, noise.shape, conds, guider.model_options)
        self.loaded = True
        self.multigpu_patchers = compat.prepare_multigpu_clones(guider)
        device = self.device
        if denoise_mask is not None:
            denoise_mask = comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, device).float()
        noise = noise.to(device=device, dtype=torch.float32)
        latent_image = latent_image.to(device=device, dtype=torch.float32)
        self.sigmas = sigmas.to(device)
        comfy.samplers.cast_to_load_options(guider.model_options, device=device, dtype=patcher.model_dtype())
        for each in (patcher, *self.multigpu_patchers):
            each.pre_run()

        if torch.count_nonzero(latent_image) > 0:  # ComfyUI leaves an empty latent unscaled
            latent_image = guider.inner_model.process_latent_in(latent_image)
        guider.conds = compat.process_conds(guider.inner_model, noise, guider.conds, device, latent_image,
                                            denoise_mask, seed)
        model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
        model_options.setdefault("transformer_options", {})["sample_sigmas"] = self.sigmas
        self.extra_args = {"model_options": model_options, "seed": seed}
        self.noise, self.latent_image, self.denoise_mask = noise, latent_image, denoise_mask

    def start(self, sampler: Any) -> torch.Tensor:
        """Set up stepping the sampler's function in pieces, as KSAMPLER.sample sets up its
        one call; returns the noise-scaled start latent."""
        self.extra_args["denoise_mask"] = self.denoise_mask
        self.model_k = comfy.samplers.KSamplerX0Inpaint(self.guider, self.sigmas)
        self.model_k.latent_image = self.latent_image
        if sampler.inpaint_options.get("random", False):  # ddim: KSAMPLER.sample's inpainting noise
            generator = torch.manual_seed(self.extra_args.get("seed", 41) + 1)
            self.model_k.noise = torch.randn(self.noise.shape, generator=generator, device="cpu") \
                .to(self.noise.dtype).to(self.noise.device)
        else:
            self.model_k.noise = self.noise
        return self.model_sampling.noise_scaling(self.sigmas[0], self.noise, self.latent_image,
                                                 sampler.max_denoise(self.guider, self.sigmas))

    @property
    def model_sampling(self) -> Any:
        return self.guider.inner_model.model_sampling

    # --- between: the sampler

    def activate(self) -> None:
        """Make this member's weights the live ones before evaluating it (members that are
        clones of one checkpoint share its torch module; a reload reserves what ComfyUI's
        own sampling reserves). For members on distinct models, two identity checks."""
        load_together([self.guider], self.memory_required, self.minimum_memory_required)

    def set_cfg(self, cfg: float) -> None:
        self.guider.set_cfg(cfg)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The LATENT samples of a trajectory that ends at the last sigma of the session:
        inverse noise scaling, then the latent format's scale out (as inner_sample ends)."""
        samples = self.model_sampling.inverse_noise_scaling(self.sigmas[-1], x)
        return self.guider.inner_model.process_latent_out(samples.to(torch.float32))

    # --- release: the same calls' cleanup, in reverse

    def release(self, keep_controls: set) -> None:
        """Undo prepare. ControlNets in ``keep_controls`` belong to sessions still open
        (one ControlNet wired into several members): their owner cleans them up."""
        if not self.prepared:
            return
        self.prepared = False
        guider, patcher = self.guider, self.patcher
        try:
            if self.loaded:
                for each in (patcher, *self.multigpu_patchers):
                    each.cleanup()
                compat.shutdown_multigpu_pool(guider)
                comfy.sampler_helpers.cleanup_additional_models(guider.loaded_models)
                comfy.sampler_helpers.cleanup_additional_models(self.controls() - keep_controls)
        finally:
            self.loaded = False
            comfy.samplers.cast_to_load_options(guider.model_options, device=patcher.offload_device)
            guider.model_options = self.original_model_options
            patcher.hook_mode = self.original_hook_mode
            patcher.restore_hook_patches()
            for name in ("inner_model", "conds", "loaded_models"):  # as CFGGuider.sample deletes them
                guider.__dict__.pop(name, None)

    def controls(self) -> set:
        """The ControlNets this session's conds use (while its models are loaded)."""
        if not self.loaded:
            return set()
        return {c for conds in self.guider.conds.values()
                for c in comfy.sampler_helpers.get_models_from_cond(conds, "control")}
