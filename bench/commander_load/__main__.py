"""``python -m bench.commander_load``: both sections, renewals then claims, on each database."""

from bench.commander_load import __doc__ as DOC
from bench.commander_load import claims, renewals
from bench.commander_load.harness import main

if __name__ == "__main__":
    raise SystemExit(main("bench.commander_load", DOC, [renewals.SECTION, claims.SECTION]))
