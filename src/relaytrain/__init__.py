"""relaytrain: LLM post-training on unreliable GPUs, handed from machine to machine like a baton."""

__version__ = "0.1.0"

TOKEN_ENV = "RELAY_TOKEN"
"""The environment variable every ``relay`` command reads its bearer token from (``--token``). A
worker never passes it on to its trainer. Here, not in ``api``, so that ``relay --help`` need not
import the API's modules."""

CA_CERT_ENV = "RELAY_CA_CERT"
"""The environment variable every client of the commander (``relay`` commands, workers, rollout
workers) reads the CA certificate it verifies an ``https://`` commander with (``--ca-cert``). Unset:
the public CAs. Beside :data:`TOKEN_ENV`, for the same reason."""

UNSCHEDULABLE_AFTER_S = 60.0
"""The commander's default grace (``relay serve --unschedulable-after``): how long a queued run waits
for a live worker or host that fits before it is shown ``unschedulable``. Beside :data:`TOKEN_ENV`,
for the same reason."""

EVAL_BATCH_SIZE = 64
"""Prompts an evaluation completes together unless told (``eval.batch_size``, ``relay eval
--batch-size``, ``python -m relaytrain.evaluate.score --batch-size``). Beside :data:`TOKEN_ENV`, for
the same reason."""
