"""``python -m relaytrain.train sft|grpo …``: see ``relaytrain.train.standalone``."""

import sys

from relaytrain.train.standalone import main

sys.exit(main())
