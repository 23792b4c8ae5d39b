"""Members that share a checkpoint: weights of their own, or one evaluation for several.

Members that are clones of one checkpoint share its torch module. When their weights
differ (a LoRA or a model merge on one of them, a hook LoRA in its conds) and they step in
turn inside an aggregated span, ComfyUI would re-patch that module at every switch between
them, twice per step. Such a member runs on a resident copy of the module instead, patched
once and kept from run to run while its MODEL lives, whenever ComfyUI's memory allows; when
it does not, one log line says so and the members are re-patched as before. Members that
only hand over to each other need no copy: the module is re-patched once per handoff.

When members have the very same weights and options (the same checkpoint with other
prompts, a GLIGEN box, a ControlNet, area or mask conds) and continue from one latent,
their conds are evaluated together: the first of them to call the model runs ComfyUI's
calc_cond_batch on every such member's conds at once (as ComfyUI batches cond and uncond,
split by its own memory estimate), and each member's sampling_function takes its share
and applies its own CFG. A cond list that several of them share in one role (typically one
negative prompt for all) is evaluated once: at one latent and sigma, with the same weights,
it is the same prediction.

What a batched member sees is what it would see alone. calc_cond_batch numbers the items
of a call by their cond list (``cond_or_uncond``), and attention patches written the way
IPAdapter, InstantID or LLLite write theirs index ``(cond, uncond)[i]`` with those numbers;
so every batched call tags each item 0 (a positive list) or 1 (a negative list), through
the outermost APPLY_MODEL wrapper, before any other wrapper or patch reads it. Patches that
work on fixed chunks of the latent's batch (reference-only) keep their layout: every cond
list holds the whole latent batch. Two kinds of models are never batched (``batchable``):
one with a unet function wrapper, which sees the whole call and may read its layout, and
one whose patches may hand state to its CFG functions (SAG records the negative's
attention for its post-CFG function: in a batch, one member would read another's).
"""
from __future__ import annotations

import itertools
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import psutil
import torch

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers

from . import compat
from .members import Member, member_label

logger = logging.getLogger(__name__)

# MODEL of a member -> the patcher on its resident copy (None: none could be made), for as
# long as that MODEL lives.
_RESIDENT_COPIES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

# The model_options key of ComfyUI's hook for replacing calc_cond_batch inside
# sampling_function (each member's CFG path stays ComfyUI's own).
CALC_COND_BATCH_HOOK = "sampler_calc_cond_batch_function"
# The key of the APPLY_MODEL wrapper that tags batched items positive or negative.
TAG_WRAPPER = "amdm_cond_or_uncond"
CFG_FUNCTIONS = ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function")


def shares_weights_storage(a: Any, b: Any) -> bool:
    """Whether two MODELs are patchers of one torch module (clones of one checkpoint)."""
    return a.model is b.model


def same_weights(a: Any, b: Any) -> bool:
    """Patchers of one torch module whose weight patches are the same (ComfyUI's own
    test of clones that share their weights)."""
    return shares_weights_storage(a, b) and bool(a.clone_has_same_weights(b))


def _has_hooks(member: Member) -> bool:
    return any("hooks" in entry[1] for entry in (*member.positive, *member.negative))


def _same_weights(a: Member, b: Member) -> bool:
    return not _has_hooks(a) and not _has_hooks(b) and same_weights(a.model, b.model)


def _same_inputs(a: Any, b: Any) -> bool:
    """Structural equality of what a model is given: dicts, lists and tuples item by item,
    tensors (and ComfyUI's cond wrappers) by value, plain values by ==, anything else (a
    patch function, a ControlNet) by identity."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and \
            bool(torch.equal(a, b))
    if isinstance(a, comfy.conds.CONDRegular):
        return _same_inputs(a.cond, b.cond)
    if isinstance(a, dict):
        # Every processed cond gets a uuid of its own; it names the cond, it is not an input.
        keys = a.keys() - {"uuid"}
        return keys == b.keys() - {"uuid"} and all(_same_inputs(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    return isinstance(a, (str, int, float, bool)) and a == b


def same_model_options(a: Any, b: Any) -> bool:
    """Whether two MODELs evaluate alike apart from weights: the same attention patches,
    wrappers and options (patch objects compared by identity; copies count as different)."""
    return _same_inputs(a.model_options, b.model_options)


def batchable(model: Any) -> bool:
    """Whether a model can be evaluated for several members in one call (the module
    docstring says why some cannot)."""
    options = model.model_options
    if "model_function_wrapper" in options:
        return False
    transformer_options = options.get("transformer_options", {})
    patched = any(transformer_options.get(key) for key in ("patches", "patches_replace", "wrappers")) or \
        any(model.wrappers.values())
    return not (patched and any(options.get(key) for key in CFG_FUNCTIONS))


def switch_weights(models: Sequence[Any], members: Sequence[Member], a: int, b: int) -> bool:
    """Whether members ``a`` and ``b`` run on one torch module with different weights (no
    room for a copy, or a hook LoRA), so that the module is re-patched between them."""
    if not shares_weights_storage(models[a], models[b]):
        return False
    hooked = _has_hooks(members[a]) or _has_hooks(members[b])
    return hooked or not same_weights(models[a], models[b])


def can_hold_resident_copy(patcher: Any, needed: int) -> tuple[bool, str]:
    """Whether ``needed`` bytes (the window's weights with one more copy, and ComfyUI's
    inference reserve) fit on the copy's device, by ComfyUI's memory state; when not, the
    reason."""
    state = comfy.model_management.vram_state
    if state in (comfy.model_management.VRAMState.LOW_VRAM, comfy.model_management.VRAMState.NO_VRAM):
        return False, f"ComfyUI runs in {state.name} mode"
    device = patcher.load_device
    total = comfy.model_management.get_total_memory(device)
    if needed > total:
        return False, (f"{needed / 2**30:.1f} GiB of weights and inference memory exceed "
                       f"the {total / 2**30:.1f} GiB of {device}")
    size, available = patcher.model_size(), psutil.virtual_memory().available
    if size > available:
        return False, f"{size / 2**30:.1f} GiB more exceed the {available / 2**30:.1f} GiB of free RAM"
    return True, ""


def aggregated_pairs(spans: Sequence[Any]) -> set[frozenset[int]]:
    """Members that step in turn, one step each, somewhere in the run (in one aggregated span)."""
    return {frozenset(pair) for span in spans if span.aggregated
            for pair in itertools.combinations(span.members, 2)}


def copy_memory_needed(models: Sequence[Any], copy_of: Any) -> int:
    """Bytes on the device when a copy of ``copy_of``'s weights is added to ``models``: each
    torch module once (clones of one checkpoint share theirs), the copy, and ComfyUI's
    inference reserve."""
    modules: list[Any] = []
    for model in models:
        if not any(shares_weights_storage(model, known) for known in modules):
            modules.append(model)
    return sum(m.model_size() for m in modules) + copy_of.model_size() + \
        int(comfy.model_management.minimum_inference_memory())


def resident_models(members: Sequence[Member], target: int, spans: Sequence[Any]) -> list[Any]:
    """The MODEL each member runs on: its own, or a resident copy of its checkpoint when it
    steps in turn with an earlier member (the target first) of the same checkpoint but not
    of the same weights. Members that only hand over to each other need no copy: their
    checkpoint is patched once per handoff."""
    order = [target, *(i for i in range(len(members)) if i != target)]
    pairs = aggregated_pairs(spans)
    models: list[Any] = [m.model for m in members]
    placed: list[int] = []
    for i in order:
        member = members[i]
        sharing = [j for j in placed if frozenset((i, j)) in pairs and
                   shares_weights_storage(member.model, members[j].model)]
        # A member with the same weights as one already placed runs where it does: on the
        # shared module (whatever its options: they are the patcher's, not the module's), or
        # on that member's copy when the options are the same too.
        twin = next((j for j in sharing if _same_weights(member, members[j]) and
                     (models[j] is members[j].model or
                      same_model_options(member.model, members[j].model))), None)
        placed.append(i)
        if not sharing:
            continue
        if twin is not None:
            models[i] = models[twin] if models[twin] is not members[twin].model else member.model
            continue
        label = member_label(i, member.name)
        copy = _RESIDENT_COPIES.get(member.model)
        if member.model in _RESIDENT_COPIES and copy is None:
            continue  # no copy could be made: said once, when it was tried
        if copy is None:
            fits, reason = can_hold_resident_copy(member.model, copy_memory_needed(models, member.model))
            if not fits:
                logger.info("%s shares its checkpoint with %s but not its weights, and no "
                            "copy of it can stay resident (%s): the checkpoint is re-patched "
                            "at every switch between them", label,
                            member_label(sharing[0], members[sharing[0]].name), reason)
                continue
            copy = compat.independent_copy(member.model)
            _RESIDENT_COPIES[member.model] = copy
            if copy is None:
                logger.info("%s shares its checkpoint with %s but not its weights, and its "
                            "loader's model cannot be copied: the checkpoint is re-patched at "
                            "every switch between them", label,
                            member_label(sharing[0], members[sharing[0]].name))
                continue
            logger.info("%s runs on a resident copy of its checkpoint (its weights differ "
                        "from %s's)", label, member_label(sharing[0], members[sharing[0]].name))
        models[i] = copy
    return models


def _guider_conds(guider: Any, cfg1_optimised: bool) -> list[Optional[list]]:
    """[positive, negative] as the guider's sampling_function passes them to
    calc_cond_batch (negative None at cfg 1 unless the sampler disables that shortcut)."""
    negative = None if cfg1_optimised and math.isclose(guider.cfg, 1.0) else guider.conds.get("negative")
    return [guider.conds.get("positive"), negative]


def _tagging(model_options: dict, tags: list[int]) -> dict:
    """A copy of ``model_options`` whose model calls see every batch item tagged 0
    (positive) or 1 (negative) in cond_or_uncond, instead of its cond list's position
    ``i`` (tags[i])."""
    def tag_items(executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                  c_crossattn: Any = None, control: Any = None, transformer_options: dict = {},
                  **kwargs: Any) -> torch.Tensor:
        tagged = {**transformer_options,
                  "cond_or_uncond": [tags[i] for i in transformer_options["cond_or_uncond"]]}
        return executor(x, t, c_concat, c_crossattn, control, tagged, **kwargs)

    apply_model = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    transformer_options = model_options.get("transformer_options", {})
    wrappers = transformer_options.get("wrappers", {})
    # First in the dict, so outermost: every other APPLY_MODEL wrapper sees the tags too.
    tagged_wrappers = {**wrappers, apply_model: {TAG_WRAPPER: [tag_items], **wrappers.get(apply_model, {})}}
    return {**model_options, "transformer_options": {**transformer_options, "wrappers": tagged_wrappers}}


@dataclass
class _Evaluation:
    """One batched evaluation for the members ``indices``, all at latent ``x``."""

    indices: list[int]
    x: torch.Tensor
    cond_lists: dict[int, list] = field(default_factory=dict)
    outputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    sigma: Optional[torch.Tensor] = None


class SharedEvaluation:
    """Batches the evaluations of an aggregated span's members with the same weights and
    latent."""

    def __init__(self, sessions: Sequence[Any], models: Sequence[Any],
                 members: Sequence[Member], masked: bool):
        self.sessions = sessions
        self.groups: list[list[int]] = [] if masked else _groups(models, members, sessions)
        self.cond_classes = _cond_classes(self.groups, sessions)
        self.pending: dict[int, _Evaluation] = {}

    def window_args(self, index: int, extra_args: dict) -> dict:
        """The member's sampler arguments inside the span: with the batching hook in its
        model_options if it belongs to a group."""
        if not any(index in group for group in self.groups):
            return extra_args

        def hook(args: dict) -> list:
            return self.evaluate(index, args["model"], args["conds"], args["input"], args["sigma"],
                                 args["model_options"])
        return {**extra_args, "model_options": {**extra_args["model_options"], CALC_COND_BATCH_HOOK: hook}}

    def begin_step(self, states: Sequence[torch.Tensor]) -> None:
        """Before the members' steps: group members that continue from one tensor."""
        self.pending = {}
        for group in self.groups:
            by_state: dict[int, list[int]] = {}
            for i in group:
                by_state.setdefault(id(states[i]), []).append(i)
            for indices in by_state.values():
                if len(indices) > 1:
                    evaluation = _Evaluation(indices, states[indices[0]])
                    self.pending.update((i, evaluation) for i in indices)

    def evaluate(self, index: int, model: Any, conds: list, x: torch.Tensor,
                 sigma: torch.Tensor, model_options: dict) -> list[torch.Tensor]:
        """The hook in member ``index``'s sampling_function: its share of the batched
        evaluation when this call is the one it was made for, else its own."""
        evaluation = self.pending.pop(index, None)
        if evaluation is not None and x is not evaluation.x:
            evaluation.indices.remove(index)  # this step does not start at the shared latent
        elif evaluation is not None:
            if evaluation.sigma is None:
                self._run(evaluation, model, x, sigma, model_options)
            if torch.equal(sigma, evaluation.sigma) and \
                    all(a is b for a, b in zip(conds, evaluation.cond_lists[index])):
                return evaluation.outputs[index]
        return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)

    def _run(self, evaluation: _Evaluation, model: Any, x: torch.Tensor, sigma: torch.Tensor,
             model_options: dict) -> None:
        cfg1 = not model_options.get("disable_cfg1_optimization", False)
        evaluation.cond_lists = {i: _guider_conds(self.sessions[i].guider, cfg1) for i in evaluation.indices}
        # Each distinct cond list once; a skipped uncond (None, cfg 1) gives zeros.
        flat: list[Optional[list]] = []
        tags: list[int] = []
        position: dict[Optional[tuple[int, int]], int] = {}
        slots: dict[int, list[int]] = {}
        for i in evaluation.indices:
            slots[i] = []
            for tag, (cond_class, conds) in enumerate(zip(self.cond_classes[i], evaluation.cond_lists[i])):
                # A list evaluated once must also be tagged once: one member's positive that
                # is another's negative (an empty prompt) is two items, tagged 0 and 1.
                key = None if conds is None else (cond_class, tag)
                if key not in position:
                    position[key] = len(flat)
                    flat.append(conds)
                    tags.append(tag)
                slots[i].append(position[key])
        outputs = comfy.samplers.calc_cond_batch(model, flat, x, sigma, _tagging(model_options, tags))
        evaluation.outputs = {i: [outputs[p] for p in slots[i]] for i in evaluation.indices}
        evaluation.sigma = sigma


def _groups(models: Sequence[Any], members: Sequence[Member],
            sessions: Sequence[Any]) -> list[list[int]]:
    """Members that can share an evaluation: the same weights and options on one device,
    a batchable model, no hooks, no calc_cond_batch hook of their own."""
    groups: list[list[int]] = []
    for i, member in enumerate(members):
        if _has_hooks(member) or not batchable(models[i]) or \
                CALC_COND_BATCH_HOOK in sessions[i].extra_args["model_options"]:
            continue
        for group in groups:
            j = group[0]
            if sessions[i].device == sessions[j].device and same_weights(models[i], models[j]) and \
                    same_model_options(models[i], models[j]):
                group.append(i)
                break
        else:
            groups.append([i])
    return [group for group in groups if len(group) > 1]


def _cond_classes(groups: Sequence[Sequence[int]],
                  sessions: Sequence[Any]) -> dict[int, tuple[int, int]]:
    """For every grouped member, the class of its positive and of its negative cond list:
    lists that are the same model input share a class. Compared once per span."""
    representatives: list[list] = []
    classes: dict[int, tuple[int, int]] = {}

    def class_of(conds: Optional[list]) -> int:
        for n, known in enumerate(representatives):
            if conds is not None and known is not None and _same_inputs(conds, known):
                return n
        representatives.append(conds)
        return len(representatives) - 1

    for group in groups:
        representatives.clear()
        for i in group:
            positive, negative = _guider_conds(sessions[i].guider, False)
            classes[i] = (class_of(positive), class_of(negative))
    return classes
