"""ComfyUI entry point for the NewBie node pack (V3 API: one ``comfy_entrypoint``).

Importing this package outside ComfyUI is safe: nothing from ComfyUI is imported until
ComfyUI calls ``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import NewBieExtension

    return NewBieExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
