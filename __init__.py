"""comfyui-amdm: Aggregation of Multiple Diffusion Models for ComfyUI.

Inside ComfyUI this registers the nodes (``comfy_entrypoint``, ComfyUI's V3 extension entry
point). Elsewhere (no ``comfy`` to import), or when this file is imported as a plain module
rather than as a package (a test runner collecting a checkout whose directory name is not a
valid module name), it imports with no nodes, so that ``amdm_core`` stays usable on its own.
"""
import importlib.util
import logging

WEB_DIRECTORY = "./web"

if not __package__ or importlib.util.find_spec("comfy") is None:
    logging.getLogger(__name__).debug("not inside ComfyUI as a package: no nodes registered")
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
