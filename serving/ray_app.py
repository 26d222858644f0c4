"""`opens2s serve` as a Ray Serve deployment: N replicas of the same app (each one model and one backend on its own
GPU or CPU slice) behind one HTTP endpoint; Ray's proxy spreads requests over them (streams and WebSockets included).

Either `opens2s serve --ray --replicas 2 [--model ...]`, or Ray's own CLI with this import path:

    OPENS2S_MODEL=/path/to/model serve run opens2s.serving.ray_app:app

`serve run` builds `app` from the environment: `OPENS2S_MODEL`, `OPENS2S_REPLICAS` (default 1),
`OPENS2S_REPLICA_GPUS` (default 0), `OPENS2S_API_KEY`. Autoscaling instead of a fixed count: give the deployment an
`autoscaling_config`, e.g. in a Serve config file

    applications:
      - name: opens2s
        import_path: opens2s.serving.ray_app:app
        deployments:
          - name: OpenS2SDeployment
            max_ongoing_requests: 40          # >= max_active + max_queued of one replica
            autoscaling_config:
              min_replicas: 1
              max_replicas: 8
              target_ongoing_requests: 6      # a little under max_active: scale before answers queue
              upscale_delay_s: 10
              downscale_delay_s: 300          # a replica holds a model: do not drop it on a short lull
            ray_actor_options: {num_gpus: 1}

A replica that is full answers 429 like a single server; `X-OpenS2S-Replica` on every response names the replica.
"""

import logging
import os
import time


__all__ = ["OpenS2SDeployment", "app", "build_app", "serve_forever"]

logger = logging.getLogger(__name__)

try:
    from ray import serve
except ImportError as error:  # the `ray` extra
    raise ImportError("serving on Ray needs ray[serve]: pip install 'opens2s[ray]'") from error


@serve.ingress()
class OpenS2SDeployment:
    """One replica: the model loaded with [`build_server`] options and the FastAPI app on it."""

    def __init__(self, options: dict):
        from opens2s.serving.command import build_server

        self.server = build_server(**options)

    def __serve_build_asgi_app__(self):
        from opens2s.serving.app import build_asgi

        return build_asgi(self.server)

    def __del__(self):
        server = getattr(self, "server", None)
        if server is not None:
            server.close()


def build_app(options: dict, replicas: int = 1, gpus: float = 0.0):
    """The bound Ray Serve application: `replicas` copies of [`OpenS2SDeployment`], `gpus` GPUs each."""
    limits = options.get("limits") or {}
    max_ongoing = limits.get("max_active", 8) + limits.get("max_queued", 32)
    deployment = serve.deployment(
        OpenS2SDeployment,
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_gpus": gpus, "num_cpus": 1},
    )
    return deployment.bind(options)


def _env_app():
    options = {
        "model": os.environ.get("OPENS2S_MODEL") or None,
        "api_key": os.environ.get("OPENS2S_API_KEY") or None,
        "device": "auto",
        "dtype": "auto",
    }
    replicas = int(os.environ.get("OPENS2S_REPLICAS", "1"))
    return build_app(options, replicas, float(os.environ.get("OPENS2S_REPLICA_GPUS", "0")))


app = _env_app()


def serve_forever(options: dict, replicas: int, host: str, port: int, gpus: float | None = None) -> int:
    """Start a local Ray instance (or join `RAY_ADDRESS`), deploy `replicas` replicas on `host:port`, and block."""
    import ray
    import torch

    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(options, replicas, gpus), name="opens2s", route_prefix="/")
    logger.info("serving %d replicas on http://%s:%d", replicas, host, port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
