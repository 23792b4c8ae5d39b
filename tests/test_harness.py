"""The test harness itself: fixture models load through ComfyUI's own loaders and behave, and
the real server runs a core-only workflow. Nothing here depends on the pack."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from support import comfy_env, fixture_models
from support.comfy_server import ComfyServerError

PROMPT = "a photo of a red cat sitting on a blue sofa"
NEGATIVE = "blurry, low quality"


def denoised_prediction(model, positive, negative, sigma: float = 3.0, seed: int = 3, cfg: float = 1.0) -> torch.Tensor:
    """The model's denoised estimate at ``sigma``, through ComfyUI's sampling path.

    One Euler step from ``sigma`` down to 0 returns exactly the denoised estimate; going
    through the sampler applies ControlNet / GLIGEN conditioning and LoRA patches as a real
    sampling run does.
    """
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = torch.tensor([sigma, 0.0])
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      disable_pbar=True, seed=seed)


def assert_changed(reference: torch.Tensor, changed: torch.Tensor, at_least: float = 0.01) -> None:
    assert torch.isfinite(changed).all()
    relative = ((changed - reference).norm() / reference.norm()).item()
    assert relative > at_least, f"output changed by only {relative:.2e} (relative)"


def test_missing_comfyui_is_an_error_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="COMFYUI_PATH"):
        comfy_env.find_comfyui()


def test_in_process_comfy_is_on_cpu_and_uses_comfyui_nodes_module(comfy) -> None:
    from comfy import model_management

    assert model_management.get_torch_device() == torch.device("cpu")
    assert Path(comfy.nodes.__file__).resolve() == comfy.path / "nodes.py"


def test_fixture_checkpoints_are_detected_as_sd15(comfy, fixture_files, caplog: pytest.LogCaptureFixture) -> None:
    from comfy import model_detection, supported_models, utils

    unets = []
    for name, path in fixture_files["checkpoints"].items():
        state_dict = utils.load_torch_file(str(path))
        config = model_detection.model_config_from_unet(state_dict, "model.diffusion_model.")
        assert type(config) is supported_models.SD15, name
        assert config.unet_config["channel_mult"] == [1]
        assert config.unet_config["model_channels"] == 320
        unets.append(state_dict["model.diffusion_model.input_blocks.1.1.proj_in.weight"])
    assert not torch.equal(unets[0], unets[1]) and not torch.equal(unets[1], unets[2])

    with caplog.at_level(logging.WARNING):
        model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(fixture_models.CHECKPOINT_NAMES[1])[:3]
    assert type(model.model.model_config) is supported_models.SD15
    # ComfyUI warns about missing UNet / CLIP / VAE weights; it only debug-logs the CLIP
    # logit_scale and text_projection that SD1.5 checkpoints never carry.
    assert [r.getMessage() for r in caplog.records if "missing" in r.getMessage()] == []
    assert clip is not None and vae is not None


def test_fixture_checkpoint_samples_finite_non_degenerate_latents(comfy, sd15, encode) -> None:
    positive, negative = encode(sd15.clip, PROMPT), encode(sd15.clip, NEGATIVE)
    latent = comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    assert latent["samples"].shape == (1, 4, 8, 8)

    def sample(seed: int, cond) -> torch.Tensor:
        return comfy.nodes.common_ksampler(sd15.model, seed, 4, 7.5, "euler", "normal", cond, negative, latent)[0]["samples"]

    first = sample(0, positive)
    assert torch.isfinite(first).all()
    # Real SD1.5 latents (unscaled VAE space) have a standard deviation of roughly 4 to 8.
    assert 1.0 < first.std().item() < 20.0
    assert not torch.allclose(first, sample(1, positive))
    assert not torch.allclose(first, sample(0, negative))

    image = comfy.nodes.VAEDecode().decode(sd15.vae, {"samples": first})[0]
    assert image.shape == (1, 64, 64, 3)
    assert 0.02 < image.std().item()


def test_fixture_checkpoints_differ_in_predictions(comfy, sd15_members, encode) -> None:
    # cfg 1: only the positive conditioning is evaluated.
    conds = [encode(m.clip, PROMPT) for m in sd15_members]
    predictions = [denoised_prediction(m.model, cond, cond) for m, cond in zip(sd15_members, conds)]
    assert_changed(predictions[0], predictions[1])
    assert_changed(predictions[0], predictions[2])


def test_lora_loads_and_changes_output(comfy, fixture_files, sd15, encode, caplog: pytest.LogCaptureFixture) -> None:
    positive, negative = encode(sd15.clip, PROMPT), encode(sd15.clip, NEGATIVE)
    base = denoised_prediction(sd15.model, positive, negative)
    with caplog.at_level(logging.WARNING):
        model_lora, clip_lora = comfy.nodes.LoraLoader().load_lora(
            sd15.model, sd15.clip, fixture_models.LORA_NAME, 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert len(model_lora.patches) > 0 and len(clip_lora.patcher.patches) > 0

    assert_changed(base, denoised_prediction(model_lora, positive, negative))
    assert_changed(positive[0][0], encode(clip_lora, PROMPT)[0][0])
    # The shared model is untouched and the comparison is deterministic.
    assert torch.equal(base, denoised_prediction(sd15.model, positive, negative))


def test_controlnet_loads_and_changes_output(comfy, fixture_files, sd15, encode, caplog: pytest.LogCaptureFixture) -> None:
    positive, negative = encode(sd15.clip, PROMPT), encode(sd15.clip, NEGATIVE)
    with caplog.at_level(logging.WARNING):
        control_net = comfy.nodes.ControlNetLoader().load_controlnet(fixture_models.CONTROLNET_NAME)[0]
    assert not [r for r in caplog.records if "missing controlnet keys" in r.getMessage()]
    scribble = torch.zeros(1, 64, 64, 3)
    scribble[:, 16:48, 30:34, :] = 1.0
    controlled = comfy.nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control_net, scribble, 1.0, 0.0, 1.0)

    base = denoised_prediction(sd15.model, positive, negative)
    with_control = denoised_prediction(sd15.model, *controlled)
    assert_changed(base, with_control)
    other_scribble = scribble.transpose(1, 2).contiguous()
    other = comfy.nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control_net, other_scribble, 1.0, 0.0, 1.0)
    assert_changed(with_control, denoised_prediction(sd15.model, *other))


def test_gligen_loads_and_changes_output(comfy, fixture_files, sd15, encode) -> None:
    positive, negative = encode(sd15.clip, PROMPT), encode(sd15.clip, NEGATIVE)
    gligen = comfy.nodes.GLIGENLoader().load_gligen(fixture_models.GLIGEN_NAME)[0]
    # One fuser per transformer block of the one-level UNet.
    assert len(gligen.model.module_list) == 4
    boxed_left = comfy.nodes.GLIGENTextBoxApply().append(positive, sd15.clip, gligen, "a red cat", 32, 64, 0, 0)[0]
    boxed_right = comfy.nodes.GLIGENTextBoxApply().append(positive, sd15.clip, gligen, "a red cat", 32, 64, 32, 0)[0]

    base = denoised_prediction(sd15.model, positive, negative)
    left = denoised_prediction(sd15.model, boxed_left, negative)
    assert_changed(base, left)
    # Random fusers have no learned locality: the box position reaches the image only through
    # one of 30 grounding tokens, so moving the box changes the prediction by ~0.3%.
    assert_changed(left, denoised_prediction(sd15.model, boxed_right, negative), at_least=1e-3)


def test_server_answers_object_info_with_core_nodes_and_fixture_models(comfy_server) -> None:
    info = comfy_server.object_info()
    for node in ("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "SamplerCustomAdvanced",
                 "LoraLoader", "ControlNetApplyAdvanced", "GLIGENTextBoxApply", "SaveImage"):
        assert node in info, node

    def choices(node: str, field: str) -> list[str]:
        return info[node]["input"]["required"][field][0]

    assert set(fixture_models.CHECKPOINT_NAMES) <= set(choices("CheckpointLoaderSimple", "ckpt_name"))
    assert fixture_models.LORA_NAME in choices("LoraLoader", "lora_name")
    assert fixture_models.CONTROLNET_NAME in choices("ControlNetLoader", "control_net_name")
    assert fixture_models.GLIGEN_NAME in choices("GLIGENLoader", "gligen_name")


def core_workflow(checkpoint: str, seed: int = 5, prefix: str = "harness") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 4, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def test_server_runs_core_workflow_and_writes_image(comfy_server) -> None:
    entry = comfy_server.run(core_workflow(fixture_models.CHECKPOINT_NAMES[0]), timeout=180)
    images = comfy_server.output_images(entry)
    assert len(images) == 1
    assert images[0].is_file() and images[0].is_relative_to(comfy_server.output_dir)
    with Image.open(images[0]) as image:
        assert image.size == (64, 64)


def test_server_rejects_invalid_prompt_with_its_error_body(comfy_server) -> None:
    with pytest.raises(ComfyServerError, match="ckpt_name"):
        comfy_server.queue(core_workflow("no_such_checkpoint.safetensors"))


def test_server_execution_error_is_reported_with_node_and_message(comfy_server) -> None:
    import safetensors.torch

    broken = comfy_server.models_dir / "checkpoints" / "harness_not_a_checkpoint.safetensors"
    safetensors.torch.save_file({"unrelated.weight": torch.zeros(2, 2)}, str(broken))
    try:
        prompt_id = comfy_server.queue(core_workflow(broken.name))
        with pytest.raises(ComfyServerError, match=r"CheckpointLoaderSimple[\s\S]*detect model type"):
            comfy_server.wait(prompt_id, timeout=120)
    finally:
        broken.unlink()
