"""SFT transcripts for the calculator environment: the start point of its GRPO example.

Each record is one episode written out as the tiny model reads it: the task (the environment's
first observation, ``"123+456="``), then either a tool call, the tool's answer and the final answer
(``"calc 123+456</s>=579\\n579"``), or the final answer alone. The model cannot add 3-digit numbers
in its head, so answering alone is mostly wrong: the share of tool calls in the data (``tool_share``)
sets how often the SFT model reaches for the calculator, and GRPO on the environment is left to
learn that it always should.

    python examples/envs/calculator/sft_data.py --out data/calc_sft.jsonl --size 4000 --tool-share 0.5
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

EOS = "</s>"
"""The tiny tokenizer's end of sequence: it ends each policy turn, as in a live episode."""


def task(rng: random.Random) -> tuple[int, int]:
    """Two 3-digit numbers, as the environment draws them."""
    return rng.randint(100, 999), rng.randint(100, 999)


def records(size: int, *, tool_share: float, seed: int = 0) -> list[dict[str, str]]:
    """``size`` transcripts, a ``tool_share`` of them with a tool call (seeded, reproducible)."""
    if not 0 <= tool_share <= 1:
        raise ValueError(f"tool_share must be in [0, 1], got {tool_share}")
    rng = random.Random(f"calc-sft:{seed}")
    out = []
    for _ in range(size):
        a, b = task(rng)
        answer = str(a + b)
        if rng.random() < tool_share:
            completion = f"calc {a}+{b}{EOS}={answer}\n{answer}"
        else:
            completion = answer
        out.append({"prompt": f"{a}+{b}=", "completion": completion, "answer": answer})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="The JSONL file to write.")
    parser.add_argument("--size", type=int, default=4000, help="Records (default 4000).")
    parser.add_argument("--tool-share", type=float, default=0.5, help="Share of transcripts with a tool call.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = records(args.size, tool_share=args.tool_share, seed=args.seed)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} records -> {args.out}")


if __name__ == "__main__":
    main()
