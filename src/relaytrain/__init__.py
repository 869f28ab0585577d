"""relaytrain: LLM post-training on unreliable GPUs, handed from machine to machine like a baton."""

__version__ = "0.1.0"

TOKEN_ENV = "RELAY_TOKEN"
"""The environment variable every ``relay`` command reads its bearer token from (``--token``). A
worker never passes it on to its trainer. Here, not in ``api``, so that ``relay --help`` need not
import the API's modules."""
