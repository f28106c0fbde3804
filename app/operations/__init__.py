"""The operations the service runs on its model, one module each (LitServe's LitAPI): its request schema and checks,
its cost, what the server prepares and the batch function the inference process runs. registry.py lists them."""
