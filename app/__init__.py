"""cvae-digits' REST service: serves an exported model directory (see model/artifacts.py) over HTTP.

Layout: settings (CVAE_* environment) -> factory.create_app (lifespan loads the model into app.state) ->
routes/ (thin HTTP translation) -> runtime (async: batching; the inference process of worker.py, or threads)
-> service (tensors and images, no HTTP).
Nothing here does work at import time; `python -m app` is the entry point.
"""
