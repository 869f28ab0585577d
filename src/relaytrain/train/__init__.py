"""Built-in trainers (SFT, GRPO), data, templates and the tiny model for CPU.

Importing this package is light: no torch, no transformers. Heavy modules import them
inside their functions:

- ``relaytrain.train.tiny``: the tiny Llama + char tokenizer; ``load_model_and_tokenizer``.
- ``relaytrain.train.data``: built-in datasets, file loaders, ``DataCursor``.
- ``relaytrain.train.templates``: ``generic`` / ``r1`` / ``chat`` prompt templates.
- ``relaytrain.train.rng``: RNG capture/restore.
- ``relaytrain.train.model_io``: the ``model/`` part of a checkpoint (full weights or LoRA).
- ``relaytrain.train.sft``: ``run_sft(config, contract) -> exit code``.
- ``relaytrain.train.exact_match``: greedy exact-match evaluation.
- ``relaytrain.train.standalone``: ``python -m relaytrain.train sft …`` (no commander).
- ``relaytrain.train.run``: the worker's entry, ``python -m relaytrain.train.run``.
- ``relaytrain.train.launch``: the torchrun launcher of a run on several ranks (DDP/FSDP).

The contract they honour (environment, exit codes, progress lines) is ``relaytrain.contract``.
"""
