"""The API: routes (one module per resource), request and response schemas, strict parsing, the fast path, and
deps.py, the one way they reach the runtime."""
