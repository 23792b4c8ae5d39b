"""Test support: locating ComfyUI, fixture models, and a real ComfyUI server."""
