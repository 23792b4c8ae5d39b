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
