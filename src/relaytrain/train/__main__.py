"""``python -m relaytrain.train sft|grpo …``: see ``relaytrain.train.standalone``."""

import gc
import sys

from relaytrain.train.standalone import main

code = main()
gc.freeze()  # exit without the GC passes over every torch/transformers object (about 2 s)
sys.exit(code)
