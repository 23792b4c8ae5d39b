"""A preview of every member: where members aggregate, the latent preview shows each one's
prediction side by side (tiles in stack order) through ComfyUI's own preview machinery; where
one member steps, its own; nothing of it is computed with previews off."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
import uuid

import comfy.cli_args
import pytest
import torch
from PIL import Image

from support.sampling import amdm, empty_latent, model_a, model_b, prompts  # noqa: F401

STEPS = 6


@contextlib.contextmanager
def preview_method(method: comfy.cli_args.LatentPreviewMethod):
    saved = comfy.cli_args.args.preview_method
    comfy.cli_args.args.preview_method = method
    try:
        yield
    finally:
        comfy.cli_args.args.preview_method = saved


def previewed_widths(amdm, model_a, model_b, prompts, member_previews: bool) -> list[int]:
    """The width of the prediction handed to the preview callback at each step of a run whose
    window holds steps 0-2 of 6."""
    from comfyui_amdm.nodes import AMDMGuider
    import comfy.sample
    import comfy.samplers
    Member, Schedule = amdm
    guider = AMDMGuider([Member(model_a, prompts["red"], prompts["empty"], 7.0),
                         Member(model_b, prompts["blue"], prompts["empty"], 5.0)],
                        Schedule(end_step=3, end_percent=1.0), member_previews=member_previews)
    latent = empty_latent()["samples"]
    widths = []
    sigmas = comfy.samplers.calculate_sigmas(model_a.get_model_object("model_sampling"), "normal", STEPS)
    guider.sample(comfy.sample.prepare_noise(latent, 5), latent, comfy.samplers.sampler_object("euler"), sigmas,
                  callback=lambda step, x0, x, total: widths.append((step, x0.shape[-1])), disable_pbar=True, seed=5)
    return widths


def test_the_window_shows_every_member_side_by_side(amdm, model_a, model_b, prompts):
    with preview_method(comfy.cli_args.LatentPreviewMethod.Latent2RGB):
        widths = previewed_widths(amdm, model_a, model_b, prompts, member_previews=True)
        assert widths == [(0, 16), (1, 16), (2, 16), (3, 8), (4, 8), (5, 8)]
        assert previewed_widths(amdm, model_a, model_b, prompts, member_previews=False) == \
            [(step, 8) for step in range(STEPS)]


def test_no_tiles_are_made_with_previews_off(amdm, model_a, model_b, prompts):
    """ComfyUI's preview method none: the callback gets the target's own prediction, as
    with member previews off (the tiles are the only concatenation of predictions)."""
    with preview_method(comfy.cli_args.LatentPreviewMethod.NoPreviews):
        widths = previewed_widths(amdm, model_a, model_b, prompts, member_previews=True)
    assert widths == [(step, 8) for step in range(STEPS)]


def test_denoised_output_is_the_targets_prediction_with_member_previews(amdm, model_a, model_b, prompts):
    """SamplerCustomAdvanced keeps the last prediction its preview callback saw as
    denoised_output: with the window reaching the last step, that is the target's own
    prediction, the same with member previews on or off, never the tiles."""
    from comfyui_amdm.nodes import AMDMGuider
    from support.comfy_env import run_node
    Member, Schedule = amdm
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(model_b, prompts["blue"], prompts["empty"], 5.0)]
    latent = empty_latent()
    noise = run_node("RandomNoise", noise_seed=5)[0]
    sampler = run_node("KSamplerSelect", sampler_name="euler")[0]
    sigmas = run_node("BasicScheduler", model=model_a, scheduler="normal", steps=STEPS, denoise=1.0)[0]

    def outputs(member_previews: bool) -> tuple[torch.Tensor, torch.Tensor]:
        guider = AMDMGuider(members, Schedule(start_percent=0.0, end_percent=1.0), member_previews=member_previews)
        output, denoised = run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler,
                                    sigmas=sigmas, latent_image=latent)
        return output["samples"], denoised["samples"]

    with preview_method(comfy.cli_args.LatentPreviewMethod.Latent2RGB):
        output, denoised = outputs(member_previews=True)
        plain_output, plain_denoised = outputs(member_previews=False)
    assert denoised.shape == output.shape == latent["samples"].shape
    assert torch.equal(output, plain_output)
    assert torch.equal(denoised, plain_denoised)


def _prompt(members: int) -> dict:
    """Two SD1.5 members through AMDMSampler (a window of 3 of 6 steps), decoded and saved."""
    from support.fixture_models import CHECKPOINT_NAMES
    prompt: dict = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAMES[0]}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAMES[1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red cube"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "ModelStack", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 7.0, "weight": 1.0, "deviation": 1.0}},
        "6": {"class_type": "ModelStack", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 5.0, "weight": 1.0, "deviation": 1.0, "stack": ["5", 0]}},
        "7": {"class_type": "AggregationSchedule", "inputs": {
            "start_percent": 0.0, "end_percent": 1.0, "aggregation": "slerp", "weight_curve": "constant",
            "deviation_mode": "none", "deviation_strength": 0.0, "target_member": 1, "noise_mode": "independent",
            "start_step": 0, "end_step": 3}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "AMDMSampler", "inputs": {"stack": ["6" if members == 2 else "5", 0], "seed": 3,
                                                      "steps": STEPS, "sampler_name": "euler", "scheduler": "normal",
                                                      "latent_image": ["8", 0], "denoise": 1.0, "schedule": ["7", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "previews"}},
    }
    return prompt


async def _preview_sizes(url: str, prompt: dict) -> list[tuple[int, int]]:
    """Queue ``prompt`` as a websocket client and collect the sizes of the preview images the
    server sends it until the prompt is done."""
    import aiohttp
    client_id = uuid.uuid4().hex
    sizes = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as socket:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                queued = await answer.json()
                assert "prompt_id" in queued, queued
                prompt_id = queued["prompt_id"]
            async for message in socket:
                if message.type == aiohttp.WSMsgType.BINARY:
                    event = struct.unpack(">I", message.data[:4])[0]
                    if event == 1:  # PREVIEW_IMAGE: 4 bytes event, 4 bytes format, the image
                        with Image.open(io.BytesIO(message.data[8:])) as image:
                            sizes.append(image.size)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data["type"] == "executing" and data["data"].get("node") is None and \
                            data["data"].get("prompt_id") == prompt_id:
                        break
                    if data["type"] == "execution_error":
                        raise AssertionError(data)
    return sizes


def test_the_server_sends_tiled_previews_during_the_window(previewing_server):
    sizes = asyncio.run(_preview_sizes(previewing_server.url, _prompt(members=2)))
    assert len(sizes) == STEPS, sizes
    # ComfyUI scales a preview to at most 512 pixels a side: the tiles show in the aspect ratio
    aspects = [width / height for width, height in sizes]
    assert aspects == [2.0] * 3 + [1.0] * 3


@pytest.fixture(scope="module")
def previewing_server(tmp_path_factory, fixture_files):
    """A real server with latent2rgb previews (the test server's default is none)."""
    from support.comfy_env import ARTIFACTS_DIR
    from support.comfy_server import serving_the_pack
    with serving_the_pack(tmp_path_factory.mktemp("previews"), ARTIFACTS_DIR / "previews-server.log",
                          extra_args=["--preview-method", "latent2rgb"]) as server:
        yield server
