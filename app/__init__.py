"""cvae-digits' REST service: serves an exported model directory (see model/artifacts.py) over HTTP.

Layout: settings (CVAE_* environment) -> factory.create_app (its lifespan loads the model and prepares the engine)
-> routes/ and fastpath (HTTP in and out) -> runtime (one batcher per endpoint) -> engine (the boundary: model work
in the inference process of worker.py, or in a thread) -> service (tensors and images, no HTTP).
Nothing here does work at import time; `python -m app` is the entry point.
"""
