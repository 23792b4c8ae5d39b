"""comfyui-amdm: Aggregation of Multiple Diffusion Models for ComfyUI.

Inside ComfyUI this registers the nodes; elsewhere (no ``comfy`` to import) the package
still imports, with no nodes, so that ``amdm_core`` stays usable on its own.
"""
import importlib.util
import logging

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy") is None:
    logging.getLogger(__name__).debug("ComfyUI not importable: no nodes registered")
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
