"""ComfyUI glue: the nodes (a V3 extension), the AMDM guider, member sessions and the
schedule chart's route."""
from . import compat
from . import routes  # noqa: F401  (registers the schedule chart's server route)
from .definitions import NODES, AMDMExtension
from .guider import AMDMGuider
from .members import Member

compat.warn_if_unsupported(compat.running_comfyui_version())


async def comfy_entrypoint() -> AMDMExtension:
    """ComfyUI's entry point for a V3 node pack."""
    return AMDMExtension()


__all__ = ["AMDMGuider", "Member", "NODES", "comfy_entrypoint"]
