"""Members loaded by ComfyUI-GGUF (UnetLoaderGGUF, a Q8_0 SD1.5 UNet), through a real server's /prompt.

The server runs with ComfyUI-GGUF installed next to the pack (``support.gguf_models`` says
where it comes from). Every run uses shared noise, linear aggregation, averaged guidance and
members with the target's prompts and cfg, so that a member with weight 0, or one with the
target's very weights, leaves the target's trajectory exactly KSampler's: what a member
changes is then its weights' doing.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import safetensors.torch
import torch

from support import comfy_env, fixture_models, gguf_models
from support.comfy_server import ComfyServer, ComfyServerError, serving_the_pack

CFG = 7.0
SEED = 42
STEPS = 6
# Distances relative to the latent's largest magnitude. SAME is float rounding (members on
# one checkpoint share batched UNet calls); QUANTISED bounds what Q8_0 changes (measured
# 0.004-0.007); CHANGED is less than what any member at weight 1 changes here (the LoRA
# member 0.04, another checkpoint 0.2).
SAME = 1e-5
QUANTISED = 0.02
CHANGED = 0.03
OTHER_CHECKPOINT = fixture_models.CHECKPOINT_NAMES[1]

# What the pack does with a LoRA clone of a GGUF model: ComfyUI-GGUF's patchers cannot be
# rebuilt from their loader (no cached_patcher_init), so the module is deep-copied.
LORA_CLONE_LOG = "member 2 ('lora') runs on a resident copy of its checkpoint (its weights differ from member 1 ('gguf')'s)"


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A real ComfyUI server with ComfyUI-GGUF and this pack in custom_nodes and the Q8_0
    UNet in its diffusion_models folder; log at ``test-artifacts/comfyui-gguf-server.log``."""
    comfyui_gguf = gguf_models.find_comfyui_gguf()
    base_dir = tmp_path_factory.mktemp("gguf_server")
    gguf_models.link_into(base_dir / "models")
    with serving_the_pack(base_dir, comfy_env.ARTIFACTS_DIR / "comfyui-gguf-server.log",
                          node_packs=[comfyui_gguf]) as server:
        if "UnetLoaderGGUF" not in server.object_info():
            raise ComfyServerError(f"ComfyUI-GGUF's nodes are not registered; import error:\n"
                                   f"{server.pack_import_error(comfyui_gguf.name) or server.log_tail()}")
        yield server


@pytest.fixture(scope="module")
def reference(gguf_server: ComfyServer) -> torch.Tensor:
    """KSampler on the GGUF model, run before any AMDM prompt has touched it."""
    return run(gguf_server, sampled_by_ksampler("gguf"), "ksampler_gguf")[0]


def graph() -> dict:
    """The loaders, one set of conds and the empty latent that every prompt shares."""
    return {
        "checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": gguf_models.SOURCE_CHECKPOINT}},
        "other": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": OTHER_CHECKPOINT}},
        "gguf": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": gguf_models.GGUF_UNET_NAME}},
        "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["gguf", 0], "lora_name": fixture_models.LORA_NAME, "strength_model": 1.0}},
        "checkpoint_lora": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["checkpoint", 0], "lora_name": fixture_models.LORA_NAME, "strength_model": 1.0}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cabin in the snow", "clip": ["checkpoint", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["checkpoint", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def sampled_by_ksampler(model: str) -> dict:
    """KSampler on the MODEL output of node ``model``."""
    return {**graph(), "sampler": {"class_type": "KSampler", "inputs": {
        "model": [model, 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": CFG,
        "seed": SEED, "steps": STEPS, "sampler_name": "euler", "scheduler": "normal",
        "latent_image": ["latent", 0], "denoise": 1.0}}}


def sampled_by_amdm(target: str, member: str, weight: float) -> dict:
    """AMDMSampler on two members, the MODEL outputs of nodes ``target`` and ``member``
    (named after them), the second with ``weight``, aggregated over the window [0, 0.5)."""
    prompt = graph()
    for index, (node, member_weight) in enumerate(((target, 1.0), (member, weight))):
        prompt[f"stack{index}"] = {"class_type": "ModelStack", "inputs": {
            "model": [node, 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": CFG,
            "weight": member_weight, "deviation": 1.0, "name": node,
            **({"stack": [f"stack{index - 1}", 0]} if index else {})}}
    prompt["schedule"] = {"class_type": "AggregationSchedule", "inputs": {
        "start_percent": 0.0, "end_percent": 0.5, "aggregation": "linear", "weight_curve": "constant",
        "deviation_mode": "none", "deviation_strength": 0.0, "target_member": 1, "noise_mode": "shared",
        "guidance": "averaged"}}
    prompt["sampler"] = {"class_type": "AMDMSampler", "inputs": {
        "stack": ["stack1", 0], "schedule": ["schedule", 0], "seed": SEED, "steps": STEPS,
        "sampler_name": "euler", "scheduler": "normal", "latent_image": ["latent", 0], "denoise": 1.0}}
    return prompt


def run(server: ComfyServer, prompt: dict, name: str) -> tuple[torch.Tensor, str]:
    """Queue ``prompt`` with its sampler's LATENT saved; returns the latent and what the
    server logged while it ran."""
    prompt = {**prompt, "save": {"class_type": "SaveLatent", "inputs": {
        "samples": ["sampler", 0], "filename_prefix": f"latents/{name}"}}}
    logged_before = len(server.log_text())
    entry = server.run(prompt, timeout=300)
    latents = [item for output in entry["outputs"].values() for item in output.get("latents", [])]
    assert len(latents) == 1, entry["outputs"]
    path = server.output_dir / latents[0].get("subfolder", "") / latents[0]["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"], server.log_text()[logged_before:]


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference, relative to the largest magnitude of ``b``."""
    return ((a - b).abs().max() / b.abs().max()).item()


def test_comfyui_starts_with_comfyui_gguf_and_the_pack(gguf_server):
    log = gguf_server.log_text()
    assert "IMPORT FAILED" not in log, gguf_server.log_tail()
    for directory in ("comfyui-amdm", gguf_models.find_comfyui_gguf().name):
        assert f"seconds: {gguf_server.custom_nodes_dir / directory}" in log, directory
    assert gguf_server.object_info()["UnetLoaderGGUF"]["input"]["required"]["unet_name"][0] == \
        [gguf_models.GGUF_UNET_NAME]


def test_unet_loader_gguf_reads_the_q8_0_unet(gguf_server, reference):
    """The GGUF file is the fixture checkpoint's UNet, quantised: KSampler on it is close to
    KSampler on the checkpoint, not equal."""
    assert "gguf qtypes: F16 (103), Q8_0 (65)" in gguf_server.log_text()
    unquantised, _ = run(gguf_server, sampled_by_ksampler("checkpoint"), "ksampler_checkpoint")
    assert 0 < distance(reference, unquantised) < QUANTISED


def test_a_gguf_target(gguf_server, reference):
    silent, _ = run(gguf_server, sampled_by_amdm("gguf", "other", 0.0), "gguf_target_silent")
    assert distance(silent, reference) <= SAME
    merged, _ = run(gguf_server, sampled_by_amdm("gguf", "other", 1.0), "gguf_target")
    assert distance(merged, reference) > CHANGED


@pytest.mark.usefixtures("reference")  # before the GGUF model is first sampled here
def test_a_gguf_member(gguf_server):
    """The GGUF member's proposals enter the merge: it moves the target's result as the
    unquantised checkpoint would, up to quantisation."""
    target_alone, _ = run(gguf_server, sampled_by_ksampler("other"), "ksampler_other")
    merged, _ = run(gguf_server, sampled_by_amdm("other", "gguf", 1.0), "gguf_member")
    unquantised, _ = run(gguf_server, sampled_by_amdm("other", "checkpoint", 1.0), "checkpoint_member")
    assert distance(merged, target_alone) > CHANGED
    assert 0 < distance(merged, unquantised) < QUANTISED


def test_a_lora_clone_of_the_gguf_target(gguf_server, reference):
    """A LoraLoaderModelOnly clone of the GGUF model as member 2 runs on a resident copy of
    the GGUF module (LORA_CLONE_LOG); the target's weights stay its own (weight 0 gives KSampler's result), the LoRA acts on the
    member (the same member without it gives KSampler's result too) as it does on the
    unquantised checkpoint, up to quantisation, and nothing of the LoRA is left on the GGUF
    model afterwards."""
    silent, log = run(gguf_server, sampled_by_amdm("gguf", "lora", 0.0), "lora_member_silent")
    assert LORA_CLONE_LOG in log, "\n".join(line for line in log.splitlines() if "member 2" in line)
    assert distance(silent, reference) <= SAME

    twin, _ = run(gguf_server, sampled_by_amdm("gguf", "gguf", 1.0), "gguf_twin")
    assert distance(twin, reference) <= SAME
    merged, _ = run(gguf_server, sampled_by_amdm("gguf", "lora", 1.0), "lora_member")
    assert distance(merged, reference) > CHANGED
    unquantised, _ = run(gguf_server, sampled_by_amdm("checkpoint", "checkpoint_lora", 1.0),
                         "checkpoint_lora_member")
    assert 0 < distance(merged, unquantised) < QUANTISED

    # KSamplerAdvanced over all steps is KSampler's computation in a node whose cached
    # result cannot stand in for a new run.
    after, _ = run(gguf_server, {**graph(), "sampler": {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["gguf", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": CFG,
        "add_noise": "enable", "noise_seed": SEED, "steps": STEPS, "sampler_name": "euler",
        "scheduler": "normal", "latent_image": ["latent", 0], "start_at_step": 0,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}}, "ksampler_gguf_after")
    assert torch.equal(after, reference)
