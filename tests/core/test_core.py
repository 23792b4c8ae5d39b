"""amdm_core on its own: plain torch, no ComfyUI."""
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from amdm_core import (EVERY_STEP, Schedule, Span, StepRange, WindowPlan, aggregate,  # noqa: E402
                       curve_factors, derive_seed, deviate, member_coefficients, member_steps, progress_of,
                       range_errors, run_window, spans_of, stages_of, steps_in, validate_weights,
                       window_plans, window_steps)

MODES = ("linear", "slerp", "paper")


def _latents(n: int, batch: int = 3, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, batch, 4, 8, 8, generator=g).to(dtype)


def _norms(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(start_dim=x.ndim - 3).norm(dim=-1)


def test_core_imports_with_torch_alone():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import amdm_core; "
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, REPO], check=True, cwd="/")


def test_package_imports_outside_comfyui_without_nodes():
    code = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('pack', sys.argv[1] + '/__init__.py', "
            "submodule_search_locations=[sys.argv[1]]); m = importlib.util.module_from_spec(spec); "
            "sys.modules['pack'] = m; spec.loader.exec_module(m); "
            "assert not hasattr(m, 'comfy_entrypoint'); import pack.amdm_core")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code, REPO], check=True, cwd="/", env=env)


@pytest.mark.parametrize("w", [0.5, 0.8, 0.1])
def test_paper_mode_is_the_papers_two_member_formula(w):
    x = _latents(2)
    weights = torch.tensor([w, math.sqrt(1 - w * w)])
    expected = w * x[0] + math.sqrt(1 - w * w) * x[1]
    torch.testing.assert_close(aggregate(x, weights, "paper"), expected, rtol=1e-6, atol=1e-6)


def test_paper_mode_normalises_to_unit_l2_norm():
    assert torch.allclose(member_coefficients(torch.tensor([3.0, 4.0]), "paper"),
                          torch.tensor([0.6, 0.8]))


def test_slerp_preserves_the_weighted_norm_per_sample():
    x = _latents(3)
    x[1] *= 2.5
    weights = torch.tensor([1.0, 2.0, 0.5])
    merged = aggregate(x, weights, "slerp")
    coefficients = weights / weights.sum()
    expected = (coefficients[:, None] * _norms(x)).sum(0)
    torch.testing.assert_close(_norms(merged), expected, rtol=1e-5, atol=1e-5)
    linear = aggregate(x, weights, "linear")
    cosine = torch.nn.functional.cosine_similarity(merged.flatten(1), linear.flatten(1), dim=1)
    torch.testing.assert_close(cosine, torch.ones(3), rtol=1e-5, atol=1e-5)


def test_linear_with_one_member_is_the_identity():
    x = _latents(1)
    assert torch.equal(aggregate(x, torch.tensor([0.7]), "linear"), x[0])


def test_linear_is_the_weighted_mean():
    x = _latents(2)
    torch.testing.assert_close(aggregate(x, torch.tensor([1.0, 3.0]), "linear"),
                               0.25 * x[0] + 0.75 * x[1])


def test_absolute_deviation_moves_by_p_and_never_overshoots():
    proposals = _latents(2)
    merged = aggregate(proposals, torch.tensor([1.0, 1.0]), "linear")
    distance = _norms(proposals - merged)
    small = 0.25 * distance.min().item()
    moved = deviate(merged, proposals, torch.tensor([small, small]), "absolute")
    torch.testing.assert_close(_norms(moved - merged), torch.full_like(distance, small),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_norms(proposals - moved), distance - small, rtol=1e-4, atol=1e-4)
    huge = deviate(merged, proposals, torch.tensor([1e6, 1e6]), "absolute")
    torch.testing.assert_close(huge, proposals, rtol=1e-5, atol=1e-5)


def test_relative_deviation_endpoints_and_none():
    proposals = _latents(3)
    merged = aggregate(proposals, torch.tensor([1.0, 1.0, 1.0]), "slerp")
    assert torch.equal(deviate(merged, proposals, torch.zeros(3), "relative"),
                       merged.expand_as(proposals))
    torch.testing.assert_close(deviate(merged, proposals, torch.ones(3), "relative"), proposals)
    half = deviate(merged, proposals, torch.full((3,), 0.5), "relative")
    torch.testing.assert_close(half, 0.5 * (merged + proposals))
    assert torch.equal(deviate(merged, proposals, torch.ones(3), "none"),
                       merged.expand_as(proposals))


def test_deviation_of_a_member_already_at_the_merge_is_finite():
    proposals = _latents(1).expand(2, -1, -1, -1, -1).clone()
    merged = aggregate(proposals, torch.tensor([1.0, 1.0]), "linear")
    assert torch.isfinite(deviate(merged, proposals, torch.tensor([3.0, 3.0]), "absolute")).all()


@pytest.mark.parametrize("mode", MODES)
def test_batch_items_are_independent(mode):
    x = _latents(3, batch=4)
    weights = torch.tensor([0.2, 0.5, 0.3])
    strengths = torch.tensor([1.0, 2.0, 3.0])
    merged = aggregate(x, weights, mode)
    moved = deviate(merged, x, strengths, "absolute")
    for b in range(4):
        alone = aggregate(x[:, b:b + 1], weights, mode)
        torch.testing.assert_close(merged[b:b + 1], alone)
        torch.testing.assert_close(moved[:, b:b + 1], deviate(alone, x[:, b:b + 1], strengths,
                                                              "absolute"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_dtype_is_kept_and_arithmetic_is_float32(dtype, mode):
    x = _latents(2, dtype=dtype)
    weights = torch.tensor([0.6, 0.8])
    merged = aggregate(x, weights, mode)
    assert merged.dtype == dtype and merged.device == x.device
    assert torch.equal(merged, aggregate(x.float(), weights, mode).to(dtype))
    moved = deviate(merged, x, torch.tensor([0.3, 0.3]), "relative")
    assert moved.dtype == dtype


def test_meta_device_is_kept():
    x = torch.empty(2, 1, 4, 8, 8, device="meta")
    assert aggregate(x, torch.tensor([1.0, 1.0]), "slerp").device.type == "meta"


SIGMAS = [14.6, 9.0, 6.0, 4.0, 2.5, 1.5, 0.8, 0.3, 0.0]


def test_window_by_sigma_range_and_steps():
    assert window_steps(SIGMAS, 1e9, 0.0, 0, 10000) == range(0, 8)
    assert window_steps(SIGMAS, 1e9, 4.0, 0, 10000) == range(0, 3)
    assert window_steps(SIGMAS, 9.0, 2.0, 0, 10000) == range(1, 5)
    assert window_steps(SIGMAS, 1e9, 0.0, 2, 5) == range(2, 5)
    assert window_steps(SIGMAS, 1e9, 4.0, 2, 5) == range(2, 3)


def test_empty_window_is_after_the_last_step():
    assert window_steps(SIGMAS, 1e9, 0.0, 20, 30) == range(8, 8)
    assert window_steps(SIGMAS, 0.1, 0.05, 0, 10000) == range(8, 8)
    assert window_steps([], 1e9, 0.0, 0, 10) == range(0, 0)


def test_window_of_a_restarting_sigma_sequence_is_its_first_run():
    restart = [10.0, 5.0, 1.0, 8.0, 4.0, 0.0]
    assert window_steps(restart, 1e9, 3.0, 0, 10000) == range(0, 2)


def test_end_step_0_means_no_limit():
    assert window_steps(SIGMAS, 1e9, 0.0, 2, 0) == range(2, 8)
    assert Schedule().end_step == 0


def _flow_percent_to_sigma(percent: float) -> float:
    """A flow model's percent_to_sigma (shift 1): sigma = 1 - percent, 1 at and below 0."""
    return 1.0 if percent <= 0.0 else (0.0 if percent >= 1.0 else 1.0 - percent)


def test_window_ties_resolve_the_same_way_however_sigma_was_rounded():
    """A step on a boundary belongs to the window that starts there: windows [0, 0.5) and
    [0.5, 1) split 4 steps 2 + 2 whether sigma 0.5 came out just above or just below."""
    for nudge in (-1e-7, 0.0, 1e-7):
        sigmas = [1.0, 0.75, 0.5 + nudge, 0.25, 0.0]
        first = steps_in(sigmas, _flow_percent_to_sigma, StepRange(end_percent=0.5))
        second = steps_in(sigmas, _flow_percent_to_sigma, StepRange(start_percent=0.5, end_percent=1.0))
        assert (first, second) == (range(0, 2), range(2, 4)), nudge


def test_window_end_1_reaches_the_last_step():
    sigmas = [1.0, 0.5, 1e-6, 0.0]
    assert steps_in(sigmas, _flow_percent_to_sigma, Schedule(end_percent=1.0).window) == range(0, 3)


def test_progress_of_inverts_percent_to_sigma():
    for percent in (0.0, 0.1, 0.5, 0.93):
        assert progress_of(1.0 - percent, _flow_percent_to_sigma) == pytest.approx(percent,
                                                                                   abs=1e-9)


def test_curves_and_window_weights():
    assert torch.equal(curve_factors("constant", 4), torch.ones(4))
    torch.testing.assert_close(curve_factors("linear_decay", 4), torch.tensor([1, .75, .5, .25]))
    torch.testing.assert_close(curve_factors("cosine_decay", 2), torch.tensor([1.0, 0.5]))
    spans = [Span(range(0, 2), (0, 1, 2)), Span(range(2, 4), (1,))]
    [plan] = window_plans(spans, [2.0, 1.0, 4.0], [1.0] * 3, target=1,
                          schedule=Schedule(weight_curve="linear_decay")).values()
    assert plan.members == (0, 1, 2) and plan.steps == range(0, 2)
    torch.testing.assert_close(plan.weights, torch.tensor([[2.0, 1.0, 4.0], [1.0, 1.0, 2.0]]))


def test_each_member_follows_the_curve_over_its_own_aggregated_steps():
    """A soft handoff: member 0 aggregates with 1 over steps 2-3 only; its linear decay runs
    over those two steps, the target (1) keeps its weight."""
    spans = [Span(range(0, 2), (0,)), Span(range(2, 4), (0, 1)), Span(range(4, 6), (1,))]
    plans = window_plans(spans, [1.0, 1.0], [1.0, 1.0], target=1, schedule=Schedule(weight_curve="linear_decay"))
    assert list(plans) == [2]
    torch.testing.assert_close(plans[2].weights, torch.tensor([[1.0, 1.0], [0.5, 1.0]]))


SIX_STEPS = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0]  # flow sigmas: progress 0, .1, .3, .5, .7, .9


def test_members_without_a_range_follow_the_schedule():
    active = member_steps(SIX_STEPS, _flow_percent_to_sigma, [None, None, StepRange(0.2, 0.8)],
                          Schedule(end_percent=0.4, target_member=2))
    assert active == [range(0, 3), range(0, 6), range(2, 5)]


def test_spans_stages_and_the_one_rule():
    """Ranges that touch hand over (one stage each); ranges that overlap aggregate there."""
    hard = spans_of([range(0, 3), range(3, 6)], 6)
    assert hard == [Span(range(0, 3), (0,)), Span(range(3, 6), (1,))]
    assert [stage.single for stage in stages_of(hard)] == [True, True]
    soft = spans_of([range(0, 4), range(2, 6)], 6)
    assert soft == [Span(range(0, 2), (0,)), Span(range(2, 4), (0, 1)), Span(range(4, 6), (1,))]
    [stage] = stages_of(soft)
    assert not stage.single and stage.steps == range(0, 6)
    classic = spans_of([range(0, 6), range(0, 2)], 6)
    assert classic == [Span(range(0, 2), (0, 1)), Span(range(2, 6), (0,))]
    three = stages_of(spans_of([range(0, 2), range(2, 4), range(4, 6)], 6))
    assert [stage.steps for stage in three] == [range(0, 2), range(2, 4), range(4, 6)]


def test_bad_ranges_are_errors_naming_the_member():
    labels = ["member 1", "member 2", "member 3"]
    ranges = [StepRange(0.0, 0.3), StepRange(0.5, 1.0), StepRange(0.95, 1.0)]
    active = member_steps(SIX_STEPS, _flow_percent_to_sigma, ranges, Schedule(target_member=2))
    errors = range_errors(spans_of(active, 6), active, ranges, [1.0] * 3, labels, 1, SIX_STEPS,
                          _flow_percent_to_sigma)
    assert any(e.startswith("member 3: its range [0.95, 1.0) holds none") for e in errors)
    assert any(e.startswith("steps 2 to 2 (progress 0.300 to 0.300) are in no member's range") for e in errors)
    target_first = member_steps(SIX_STEPS, _flow_percent_to_sigma, ranges[:2], Schedule(target_member=1))
    errors = range_errors(spans_of(target_first, 6), target_first, ranges[:2], [1.0] * 2, labels, 0, SIX_STEPS,
                          _flow_percent_to_sigma)
    assert any("the target, member 1, is not active at the last step" in e for e in errors)
    # members that overlap with weights all 0 have no merge (a third member weighs 1 elsewhere)
    overlapping = [StepRange(0.0, 0.6), StepRange(0.4, 1.0), StepRange(0.0, 0.2)]
    active = member_steps(SIX_STEPS, _flow_percent_to_sigma, overlapping, Schedule(target_member=2))
    spans = spans_of(active, 6)
    overlap = next(span for span in spans if span.members == (0, 1))
    errors = range_errors(spans, active, overlapping, [0.0, 0.0, 1.0], labels, 1, SIX_STEPS, _flow_percent_to_sigma)
    assert errors == [f"member 1 and member 2 aggregate at steps {overlap.steps.start} to {overlap.steps.stop - 1}, "
                      f"but their weights are all 0: give one of them a positive weight, or let their ranges "
                      f"not overlap"]
    assert range_errors(spans, active, overlapping, [0.0, 0.5, 1.0], labels, 1, SIX_STEPS, _flow_percent_to_sigma) == []
    assert EVERY_STEP == StepRange()


def test_run_window_steps_each_member_once_per_step_and_merges():
    calls = []

    def stepper(offset):
        def step(x, k):
            calls.append((offset, k))
            return x + offset
        return step

    states = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)]
    plan = WindowPlan(range(2, 5), (0, 1), torch.tensor([[1.0, 1.0]] * 3), torch.zeros(3, 2), "linear",
                      "none")
    merged, out = run_window(states, [stepper(1.0), stepper(3.0)], plan)
    assert merged is out[0]
    assert sorted(calls) == [(1.0, 2), (1.0, 3), (1.0, 4), (3.0, 2), (3.0, 3), (3.0, 4)]
    for x in out:
        torch.testing.assert_close(x, torch.full((1, 4, 2, 2), 6.0))
    # without deviation the members continue from one tensor, the merged latent itself
    assert out[0] is out[1]


def test_members_with_deviation_continue_from_copies_of_their_own():
    states = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)]
    plan = WindowPlan(range(1), (0, 1), torch.ones(1, 2), torch.full((1, 2), 0.5), "linear", "relative")
    merged, out = run_window(states, [lambda x, k: x + 1.0, lambda x, k: x + 3.0], plan)
    torch.testing.assert_close(merged, torch.full((1, 4, 2, 2), 2.0))
    torch.testing.assert_close(out[0], torch.full((1, 4, 2, 2), 1.5))
    torch.testing.assert_close(out[1], torch.full((1, 4, 2, 2), 2.5))


def test_derived_seeds_are_distinct_and_64_bit():
    seeds = {derive_seed(s, *keys) for s in (0, 1, 2**64 - 1)
             for keys in ((), (1,), (2,), (1, 0), (1, 1), (2, 0, 5))}
    assert len(seeds) == 18
    assert all(0 <= s < 2**64 for s in seeds)
    assert derive_seed(7, 1, 2) == derive_seed(7, 1, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"start_percent": -0.1}, "start_percent must lie in"),
    ({"end_percent": 1.5}, "end_percent must lie in"),
    ({"start_percent": 0.5, "end_percent": 0.5}, "must be greater than start_percent"),
    ({"start_step": 5, "end_step": 3}, "must be greater than start_step"),
    ({"aggregation": "mean"}, "aggregation must be one of"),
    ({"deviation_mode": "relative", "deviation_strength": 2.0}, "fraction in [0, 1]"),
    ({"deviation_strength": float("nan")}, "deviation_strength must be"),
    ({"target_member": 0}, "1-based"),
])
def test_schedule_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Schedule(**kwargs)


@pytest.mark.parametrize("weights, message", [
    ([1.0, -1.0], "member 2: weight"),
    ([1.0, float("nan")], "member 2: weight"),
    ([0.0, 0.0], "every member's weight is 0"),
])
def test_weights_are_validated_by_member(weights, message):
    with pytest.raises(ValueError, match=message):
        validate_weights(weights, ["member 1", "member 2"])
