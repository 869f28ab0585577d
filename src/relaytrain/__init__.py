"""relaytrain: LLM post-training on unreliable GPUs, handed from machine to machine like a baton."""

__version__ = "0.1.0"
