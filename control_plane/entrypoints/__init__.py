"""The Lambda entry points, one module per function in template.yaml: the API (FastAPI through
Mangum), the split, the sweep and the two event queues' consumers. Nothing imports them."""
