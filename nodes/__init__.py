"""ComfyUI glue: nodes, the AMDM guider and stack members."""
from . import compat
from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .guider import AMDMGuider
from .members import Member

compat.warn_if_unsupported(compat.running_comfyui_version())

__all__ = ["AMDMGuider", "Member", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
