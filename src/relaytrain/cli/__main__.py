"""``python -m relaytrain.cli …`` is ``relay …`` (how workers, stacks and the demo start it)."""

from relaytrain.cli import main

main()
