"""cvae-digits' REST service: serves an exported model directory (model/artifacts.py) over HTTP.

Rooms: settings.py and paths.py (the ground floor), http/ (connections, middleware, access, problem bodies),
api/ (routes, schemas, parsing, the fast path), serving/ (admission, scheduling), engine/ (the one road to the
model), telemetry/ (metrics, logs); factory.py builds the app, `python -m app` serves it. docs/architecture.md
draws a request's path through them. Nothing here does work at import time.
"""
