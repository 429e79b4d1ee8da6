"""hotbatch's RunPod worker: process OpenAI batch chunks on vLLM and report health."""

__version__ = "0.1.0"
