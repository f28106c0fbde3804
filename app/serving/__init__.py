"""Serving: admission, scheduling and batching of the engine's work. Async and torch-free."""
