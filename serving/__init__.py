"""`opens2s serve`: an OpenAI-compatible speech-to-speech server (Chat Completions with audio in and out, the Realtime
WebSocket, Prometheus metrics) on one model, and the same app as a Ray Serve deployment.

Every name loads on first use: `import opens2s.serving` imports neither fastapi, torch nor ray (the `serve` and `ray`
extras). `opens2s.serving.command` holds the CLI arguments (argparse only).
"""

from typing import TYPE_CHECKING

from transformers.utils import _LazyModule


_import_structure = {
    "app": ["build_app", "build_asgi"],
    "backend": ["EngineFull", "StreamBackend", "make_backend"],
    "command": ["add_arguments", "build_server", "run"],
    "protocol": ["APIError"],
    "server": ["OpenS2SServer", "ServerLimits"],
}

if TYPE_CHECKING:
    from opens2s.serving.app import build_app, build_asgi
    from opens2s.serving.backend import EngineFull, StreamBackend, make_backend
    from opens2s.serving.command import add_arguments, build_server, run
    from opens2s.serving.protocol import APIError
    from opens2s.serving.server import OpenS2SServer, ServerLimits
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure, module_spec=__spec__)
