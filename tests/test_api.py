"""The pack inside a real ComfyUI server, driven through its API queue (/prompt, /history)."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from support.comfy_server import ComfyServerError

CHECKPOINTS = ("v1-5-pruned-emaonly-fp16.safetensors", "dreamshaper_8.safetensors",
               "realisticVisionV60B1_v51VAE.safetensors")


def member_nodes(prompt: dict, index: int, checkpoint: str, text: str, cfg: float,
                 previous: str | None) -> str:
    """Adds loader, prompts and a ModelStack for one member; returns the ModelStack id."""
    ids = {name: f"{name}{index}" for name in ("ckpt", "pos", "neg", "stack")}
    prompt[ids["ckpt"]] = {"class_type": "CheckpointLoaderSimple",
                           "inputs": {"ckpt_name": checkpoint}}
    prompt[ids["pos"]] = {"class_type": "CLIPTextEncode",
                          "inputs": {"text": text, "clip": [ids["ckpt"], 1]}}
    prompt[ids["neg"]] = {"class_type": "CLIPTextEncode",
                          "inputs": {"text": "blurry", "clip": [ids["ckpt"], 1]}}
    inputs = {"model": [ids["ckpt"], 0], "positive": [ids["pos"], 0],
              "negative": [ids["neg"], 0], "cfg": cfg, "weight": 1.0, "deviation": 1.0,
              "name": f"m{index}"}
    if previous is not None:
        inputs["stack"] = [previous, 0]
    prompt[ids["stack"]] = {"class_type": "ModelStack", "inputs": inputs}
    return ids["stack"]


def amdm_prompt(n_members: int, sampler: str, scheduler: str, batch: int, prefix: str,
                schedule: dict | None = None) -> dict:
    prompt: dict = {}
    stack = None
    for i in range(n_members):
        stack = member_nodes(prompt, i, CHECKPOINTS[i % 3], f"prompt {i}", 7.0 - i, stack)
    prompt["latent"] = {"class_type": "EmptyLatentImage",
                        "inputs": {"width": 64, "height": 64, "batch_size": batch}}
    prompt["schedule"] = {"class_type": "AggregationSchedule", "inputs": {
        "start_percent": 0.0, "end_percent": 0.5, "aggregation": "slerp",
        "weight_curve": "linear_decay", "deviation_mode": "relative",
        "deviation_strength": 0.2, "target_member": 1, "noise_mode": "independent",
        **(schedule or {})}}
    prompt["sampler"] = {"class_type": "AMDMSampler", "inputs": {
        "stack": [stack, 0], "schedule": ["schedule", 0], "seed": 42, "steps": 6,
        "sampler_name": sampler, "scheduler": scheduler, "latent_image": ["latent", 0],
        "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sampler", 0], "vae": ["ckpt0", 2]}}
    prompt["save"] = {"class_type": "SaveImage",
                      "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return prompt


def saved_images(server, entry: dict) -> list:
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    paths = [server.output_dir / image.get("subfolder", "") / image["filename"] for image in images]
    assert paths and all(path.is_file() and path.stat().st_size > 0 for path in paths)
    return paths


def test_the_server_lists_the_nodes(comfy_server):
    info = comfy_server.object_info()
    for name in ("ModelStack", "AggregationSchedule", "AMDMGuider", "AMDMSampler"):
        assert info[name]["category"] == "sampling/amdm"
        assert info[name]["description"]
        for section in info[name]["input"].values():
            for spec in section.values():
                assert spec[1].get("tooltip"), (name, spec)


@pytest.mark.parametrize("n_members, sampler, scheduler, batch", [
    (2, "euler", "normal", 1),
    (3, "dpmpp_2m", "karras", 2),
    (2, "euler_ancestral", "simple", 2),
])
def test_amdm_workflow_through_the_queue(comfy_server, n_members, sampler, scheduler, batch):
    prefix = f"amdm_{n_members}_{sampler}"
    entry = comfy_server.wait(comfy_server.queue(
        amdm_prompt(n_members, sampler, scheduler, batch, prefix)), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert len(saved_images(comfy_server, entry)) == batch


def _saved_latent(server, entry: dict) -> torch.Tensor:
    latents = [item for output in entry["outputs"].values() for item in output.get("latents", [])]
    assert len(latents) == 1
    path = server.output_dir / latents[0].get("subfolder", "") / latents[0]["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_one_member_through_the_queue_equals_ksampler(comfy_server, sampler):
    amdm = amdm_prompt(1, sampler, "normal", 2, f"one_{sampler}")
    reference = {key: value for key, value in amdm.items() if key not in ("schedule", "sampler")}
    reference["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt0", 0], "positive": ["pos0", 0], "negative": ["neg0", 0], "cfg": 7.0,
        "seed": 42, "steps": 6, "sampler_name": sampler, "scheduler": "normal",
        "latent_image": ["latent", 0], "denoise": 1.0}}
    latents = []
    for name, prompt in (("amdm", amdm), ("ksampler", reference)):
        prompt = dict(prompt)
        prompt.pop("decode")
        prompt["save"] = {"class_type": "SaveLatent", "inputs": {
            "samples": ["sampler", 0], "filename_prefix": f"latents/{name}_{sampler}"}}
        latents.append(_saved_latent(comfy_server, comfy_server.wait(
            comfy_server.queue(prompt), timeout=300)))
    assert torch.equal(latents[0], latents[1])


def test_out_of_range_widget_is_rejected_by_validation(comfy_server):
    prompt = amdm_prompt(2, "euler", "normal", 1, "bad", schedule={"end_percent": 1.5})
    with pytest.raises(ComfyServerError, match="end_percent"):
        comfy_server.queue(prompt)


def test_bad_window_fails_the_prompt_with_the_nodes_message(comfy_server):
    prompt = amdm_prompt(2, "euler", "normal", 1, "bad",
                         schedule={"start_percent": 0.6, "end_percent": 0.3})
    with pytest.raises(ComfyServerError, match="end_percent \\(0.3\\) must be greater than "
                                        "start_percent \\(0.6\\)"):
        comfy_server.wait(comfy_server.queue(prompt), timeout=120)


def _patched_members_prompt(prompts: tuple[tuple[str, str], tuple[str, str]], models: tuple[str, str],
                            prefix: str) -> dict:
    """Two members of one checkpoint, each on the MODEL named in ``models`` (patch node ids,
    or the loader for none), with its own positive and negative, aggregated on shared noise
    (so that they are evaluated together where their MODELs allow it)."""
    prompt: dict = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINTS[0]}}}
    for patch in ("patch_a", "patch_b"):
        prompt[patch] = {"class_type": "ApplyIPAdapterStylePatch",
                         "inputs": {"model": ["ckpt", 0], "cond_scale": 1.6, "uncond_scale": 0.4}}
    stack = None
    for index, ((positive, negative), model) in enumerate(zip(prompts, models)):
        for role, text in (("pos", positive), ("neg", negative)):
            prompt[f"{role}{index}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}}
        inputs = {"model": [model, 0], "positive": [f"pos{index}", 0], "negative": [f"neg{index}", 0],
                  "cfg": 7.0 - 2 * index, "weight": 1.0, "deviation": 1.0}
        if stack is not None:
            inputs["stack"] = [stack, 0]
        stack = f"stack{index}"
        prompt[stack] = {"class_type": "ModelStack", "inputs": inputs}
    prompt["schedule"] = {"class_type": "AggregationSchedule", "inputs": {
        "start_percent": 0.0, "end_percent": 0.5, "aggregation": "slerp", "weight_curve": "constant",
        "deviation_mode": "none", "deviation_strength": 0.0, "target_member": 1, "noise_mode": "shared"}}
    prompt["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["sampler"] = {"class_type": "AMDMSampler", "inputs": {
        "stack": [stack, 0], "schedule": ["schedule", 0], "seed": 11, "steps": 6, "sampler_name": "euler",
        "scheduler": "normal", "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}}
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    prompt["save_latent"] = {"class_type": "SaveLatent",
                             "inputs": {"samples": ["sampler", 0], "filename_prefix": f"latents/{prefix}"}}
    return prompt


@pytest.mark.parametrize("prompts", [
    (("a red cube", "blurry"), ("a blue sphere", "a cat")),
    # one member's positive is the other's negative (the empty prompt), and its own negative
    (("a red cube", ""), ("", "")),
], ids=["own prompts", "shared empty prompt"])
def test_members_on_one_ipadapter_style_patched_model_through_the_queue(comfy_server, prompts):
    """Two members with their own prompts on one MODEL that carries an attention patch
    indexing (cond, uncond)[i] (as IPAdapter_plus's does): the image is that of the same
    graph with each member on its own, separately patched MODEL, within 3/255 per pixel,
    and so is the latent, within float tolerance (the test models' decoder saturates most
    pixels, so the latent is the sharper check); and the patch acts (the unpatched graph
    differs)."""
    import numpy
    from PIL import Image

    def outputs(models: tuple[str, str], name: str) -> tuple[numpy.ndarray, torch.Tensor]:
        prefix = f"ipadapter_style/{name}_{len(prompts[1][0])}"
        entry = comfy_server.wait(comfy_server.queue(_patched_members_prompt(prompts, models, prefix)), timeout=300)
        [path] = saved_images(comfy_server, entry)
        with Image.open(path) as saved:
            return numpy.asarray(saved.convert("RGB"), dtype=numpy.int16), _saved_latent(comfy_server, entry)

    one_model, one_model_latent = outputs(("patch_a", "patch_a"), "one_model")
    separately, separately_latent = outputs(("patch_a", "patch_b"), "separately")
    _, unpatched_latent = outputs(("ckpt", "ckpt"), "unpatched")
    assert numpy.abs(one_model - separately).max() <= 3
    torch.testing.assert_close(one_model_latent, separately_latent, rtol=1e-4,
                               atol=1e-5 * separately_latent.abs().max().item())
    assert not torch.allclose(one_model_latent, unpatched_latent, atol=1e-3), "the patch must act"
