"""ComfyUI glue: nodes, the AMDM guider and stack members."""
from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .guider import AMDMGuider
from .members import Member
from . import routes  # noqa: F401  (registers the schedule chart's server route)

__all__ = ["AMDMGuider", "Member", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
