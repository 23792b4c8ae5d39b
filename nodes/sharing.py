"""Members that share a checkpoint: weights of their own, or one evaluation for several.

Members that are clones of one checkpoint share its torch module. When their weights
differ (a LoRA or a model merge on one of them, a hook LoRA in its conds), ComfyUI would
re-patch that module at every switch between them, twice per window step. Such a member
runs on a resident copy of the module instead, patched once and kept from run to run while
its MODEL lives, whenever ComfyUI's memory allows; when it does not, one log line says so
and the members are re-patched as before.

When members have the very same weights and options (the same checkpoint with other
prompts, a GLIGEN box, a ControlNet, area or mask conds) and continue from one latent,
their conds are evaluated together: the first of them to call the model runs ComfyUI's
calc_cond_batch on every such member's conds at once (as ComfyUI batches cond and uncond,
split by its own memory estimate), and each member's sampling_function takes its share
and applies its own CFG. A cond list that several of them share (typically one negative
prompt for all) is evaluated once: at one latent and sigma, with the same weights, it is
the same prediction.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from . import compat
from .members import Member, member_label

logger = logging.getLogger(__name__)

# MODEL of a member -> the patcher on its resident copy, for as long as that MODEL lives.
_RESIDENT_COPIES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _has_hooks(member: Member) -> bool:
    return any("hooks" in entry[1] for entry in (*member.positive, *member.negative))


def _same_weights(a: Member, b: Member) -> bool:
    return not _has_hooks(a) and not _has_hooks(b) and compat.same_weights(a.model, b.model)


def switch_weights(models: Sequence[Any], members: Sequence[Member], a: int, b: int) -> bool:
    """Whether members ``a`` and ``b`` run on one torch module with different weights (no
    room for a copy, or a hook LoRA), so that the module is re-patched between them."""
    if not compat.shares_weights_storage(models[a], models[b]):
        return False
    hooked = _has_hooks(members[a]) or _has_hooks(members[b])
    return hooked or not compat.same_weights(models[a], models[b])


def resident_models(members: Sequence[Member], target: int) -> list[Any]:
    """The MODEL each member runs on: its own, or a resident copy of its checkpoint when it
    shares the checkpoint with an earlier member (the target first) but not its weights."""
    order = [target, *(i for i in range(len(members)) if i != target)]
    models: list[Any] = [m.model for m in members]
    placed: list[int] = []
    window_bytes = sum(compat.model_bytes(m) for m in
                       {id(m.model): m.model for m in members}.values())
    for i in order:
        member = members[i]
        sharing = [j for j in placed if compat.shares_weights_storage(member.model,
                                                                        members[j].model)]
        # A member with the same weights and options as one already placed runs where it
        # does (on the shared module, or on that member's copy).
        twin = next((j for j in sharing if _same_weights(member, members[j]) and
                     compat.same_model_options(member.model, members[j].model)), None)
        placed.append(i)
        if not sharing:
            continue
        if twin is not None:
            models[i] = models[twin] if models[twin] is not members[twin].model else member.model
            continue
        label = member_label(i, member.name)
        copy = _RESIDENT_COPIES.get(member.model)
        if copy is None:
            fits, reason = compat.can_hold_resident_copy(member.model, window_bytes)
            if not fits:
                logger.info("%s shares its checkpoint with %s but not its weights, and no "
                            "copy of it can stay resident (%s): the checkpoint is re-patched "
                            "at every switch between them", label,
                            member_label(sharing[0], members[sharing[0]].name), reason)
                continue
            copy = compat.independent_copy(member.model)
            _RESIDENT_COPIES[member.model] = copy
            logger.info("%s runs on a resident copy of its checkpoint (its weights differ "
                        "from %s's)", label, member_label(sharing[0], members[sharing[0]].name))
        models[i] = copy
        window_bytes += compat.model_bytes(copy)
    return models


@dataclass
class _Evaluation:
    """One batched evaluation for the members ``indices``, all at latent ``x``."""

    indices: list[int]
    x: torch.Tensor
    cond_lists: dict[int, list] = field(default_factory=dict)
    outputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    sigma: Optional[torch.Tensor] = None


class SharedEvaluation:
    """Batches the window evaluations of members with the same weights and latent."""

    def __init__(self, sessions: Sequence[Any], models: Sequence[Any],
                 members: Sequence[Member], masked: bool):
        self.sessions = sessions
        self.groups: list[list[int]] = [] if masked else _groups(models, members, sessions)
        self.cond_classes = _cond_classes(self.groups, sessions)
        self.pending: dict[int, _Evaluation] = {}

    def window_args(self, index: int, extra_args: dict) -> dict:
        """The member's sampler arguments inside the window: with the batching hook in
        its model_options if it belongs to a group."""
        if not any(index in group for group in self.groups):
            return extra_args
        return compat.with_calc_cond_batch_hook(
            extra_args, lambda *inputs: self.evaluate(index, *inputs))

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
        return compat.calc_cond_batch(model, conds, x, sigma, model_options)

    def _run(self, evaluation: _Evaluation, model: Any, x: torch.Tensor, sigma: torch.Tensor,
             model_options: dict) -> None:
        cfg1 = compat.cfg1_optimised(model_options)
        evaluation.cond_lists = {i: compat.guider_conds(self.sessions[i].guider, cfg1)
                                 for i in evaluation.indices}
        # Each distinct cond list once; a skipped uncond (None, cfg 1) gives zeros.
        flat: list[Optional[list]] = []
        position: dict[Optional[int], int] = {}
        slots: dict[int, list[int]] = {}
        for i in evaluation.indices:
            slots[i] = []
            for cond_class, conds in zip(self.cond_classes[i], evaluation.cond_lists[i]):
                key = None if conds is None else cond_class
                if key not in position:
                    position[key] = len(flat)
                    flat.append(conds)
                slots[i].append(position[key])
        outputs = compat.calc_cond_batch(model, flat, x, sigma, model_options)
        evaluation.outputs = {i: [outputs[p] for p in slots[i]] for i in evaluation.indices}
        evaluation.sigma = sigma


def _groups(models: Sequence[Any], members: Sequence[Member],
            sessions: Sequence[Any]) -> list[list[int]]:
    """Members that can share an evaluation: the same weights and options on one device,
    no hooks, no calc_cond_batch hook of their own."""
    groups: list[list[int]] = []
    for i, member in enumerate(members):
        if _has_hooks(member) or compat.has_calc_cond_batch_hook(sessions[i].extra_args):
            continue
        for group in groups:
            j = group[0]
            if sessions[i].device == sessions[j].device and \
                    compat.same_weights(models[i], models[j]) and \
                    compat.same_model_options(models[i], models[j]):
                group.append(i)
                break
        else:
            groups.append([i])
    return [group for group in groups if len(group) > 1]


def _cond_classes(groups: Sequence[Sequence[int]],
                  sessions: Sequence[Any]) -> dict[int, tuple[int, int]]:
    """For every grouped member, the class of its positive and of its negative cond list:
    lists that are the same model input share a class. Compared once per run."""
    representatives: list[list] = []
    classes: dict[int, tuple[int, int]] = {}

    def class_of(conds: Optional[list]) -> int:
        for n, known in enumerate(representatives):
            if compat.same_processed_conds(conds, known):
                return n
        representatives.append(conds)
        return len(representatives) - 1

    for group in groups:
        representatives.clear()
        for i in group:
            positive, negative = compat.guider_conds(sessions[i].guider, False)
            classes[i] = (class_of(positive), class_of(negative))
    return classes
