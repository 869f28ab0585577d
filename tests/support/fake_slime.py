"""A stand-in for slime's ``train.py`` (which needs GPUs, Megatron and SGLang), for testing
examples/trainers/slime/relay_slime.py: it takes the arguments the wrapper owns and does with
them what slime does — starts at the loaded iteration + 1, logs ``perf N: {...}`` per rollout
to stderr, and at each ``--save-interval`` writes ``iter_<N:07d>/``, Megatron's tracker file,
then the data-state zip. SIGTERM kills it without a save, as it does slime.

Knobs (environment): ``FAKE_SLIME_STEP_S`` seconds per rollout (0.02); ``FAKE_SLIME_FAIL_AT=N``
with ``FAKE_SLIME_FAIL_TEXT``: print the text to stderr and exit 1 at rollout N.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--save", required=True)
parser.add_argument("--save-interval", type=int, required=True)
parser.add_argument("--num-rollout", type=int, required=True)
parser.add_argument("--load")
parser.add_argument("--start-rollout-id", type=int)
args, _ = parser.parse_known_args()
save = Path(args.save)
start = 0
if args.load and (Path(args.load) / "latest_checkpointed_iteration.txt").is_file():
    start = int((Path(args.load) / "latest_checkpointed_iteration.txt").read_text()) + 1
if args.start_rollout_id is not None:
    start = args.start_rollout_id
print(f"fake slime: rollouts {start}..{args.num_rollout - 1}, argv {sys.argv[1:]}", file=sys.stderr, flush=True)
fail_at = int(os.environ.get("FAKE_SLIME_FAIL_AT", "-1"))
for rollout_id in range(start, args.num_rollout):
    time.sleep(float(os.environ.get("FAKE_SLIME_STEP_S", "0.02")))
    if rollout_id == fail_at:
        print(os.environ.get("FAKE_SLIME_FAIL_TEXT", "RuntimeError: boom"), file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"[2026-01-01] rollout.py:268 - perf {rollout_id}: {{'rollout/raw_reward': np.float64({rollout_id / 10}), "
          f"'perf/step_time': 1.5}}", file=sys.stderr, flush=True)
    if (rollout_id + 1) % args.save_interval == 0 or rollout_id == args.num_rollout - 1:
        folder = save / f"iter_{rollout_id:07d}"
        folder.mkdir(parents=True)
        (folder / "weights.distcp").write_text(f"weights after rollout {rollout_id}")
        (save / "latest_checkpointed_iteration.txt").write_text(str(rollout_id))
        (save / "rollout").mkdir(exist_ok=True)
        with zipfile.ZipFile(save / "rollout" / f"global_dataset_state_dict_{rollout_id}.pt", "w") as archive:
            archive.writestr("data.pkl", f"offset {rollout_id}")
