"""Asynchronous checkpoint overhead: how long ``CheckpointManager.save`` blocks training, and
what that costs at a 30 s checkpoint interval.

    python -m bench.async_checkpoint                      # tiny SFT state + ~100M-param synthetic state
    python -m bench.async_checkpoint --params-m 25 --repeats 2 --json out.json   # quicker
    python -m bench.async_checkpoint --interval-s 60 --threads 2 --dir /mnt/nvme

Everything is measured in this process with the real ``CheckpointManager`` (``keep_last=1``,
files under a temporary folder in ``--dir``, removed at the end), torch on ``--threads``
threads (1, like a trainer under ``OMP_NUM_THREADS=1``).

States
------
tiny SFT (real)
    An ``SFTSession`` of the built-in tiny model on the arithmetic dataset (``model=tiny``,
    default trainer settings, CPU), trained a few steps so AdamW has its moments; each save
    is exactly what ``run_sft`` does at a checkpoint boundary:
    ``manager.save(session.checkpoint_state(), step, epoch=…, metadata=…)``, with one more
    training step between saves.
synthetic ~100M
    A GPT-2-small-shaped model (``--params-m`` million float32 parameters: embeddings, 12
    blocks of attention + MLP + norms) as ``model/model.safetensors``, and the AdamW state of
    the same parameters as ``optimizer.pt`` (``{"state": {i: {step, exp_avg, exp_avg_sq}},
    "param_groups": …}``, the shape ``optimizer.state_dict()`` has), plus a small
    ``trainer_state.json``: 3 × 4 bytes per parameter, ~1.2 GB at 100M. Random values.

Figures (medians over ``--repeats`` saves per mode; sync and async saves alternate; the
first save of each manager and the median of the later ones are also shown)
-------
blocking ms
    Wall time of the ``save(...)`` call itself: for ``async_save=True`` the checks plus the
    copy of every tensor to host memory (``to_host``) and the writer thread's start; for a
    sync save the whole write, sha256, fsync, manifest, rename, ``latest`` and prune. An
    asynchronous save waits for the one in flight first; at a 30 s interval that one has long
    finished (the background write time below says by how much), so the bench calls
    ``wait()`` before each timed save, outside the timer. ``checkpoint_state()`` (building
    the dict the trainer hands to ``save``) is timed separately and is shown with it.
background write s
    ``save`` returning → ``wait()`` returning while the caller does nothing else.
amortised overhead
    blocking time per save ÷ ``--interval-s`` (target ≤ 1 % for async).
interference (``--no-interference`` skips it)
    The background writer shares the machine with training. The tiny SFT model trains
    (real ``train_step``) on this thread while an asynchronous save of the large state is
    written, and its steps/s is compared with the steps/s just before and after, with no
    save in flight. Training time lost per save ≈ background write time × (1 − rate during
    ÷ rate without); it is added to the blocking time in the "effective" overhead. Only
    meaningful as an indication on a busy machine: other processes' load changes both rates.
host-copy reference
    ``to_host`` of the large state (what async ``save`` does) against ``Tensor.copy_`` of
    every tensor into host buffers that already exist: the difference is the first-touch
    (page fault + zeroing) cost of allocating a fresh ~1.2 GB snapshot at every save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def synthetic_state(params_m: float, seed: int = 0) -> tuple[dict[str, Any], int]:
    """A GPT-2-small-like model of about ``params_m`` million float32 parameters and its AdamW state."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    d, ff = 768, 3072
    per_layer = 4 * d * d + 2 * d * ff + 4 * d + ff + d  # attention, MLP, two norms (+ biases)
    layers = max(1, min(12, int(params_m * 1e6 * 0.85 / per_layer)))  # 12 at 100M, fewer when smaller
    vocab = max(1000, int((params_m * 1e6 - layers * per_layer - 1024 * d - 2 * d) / d))
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (vocab, d), "embed_positions.weight": (1024, d)}
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                   p + "attn.q_proj.weight": (d, d), p + "attn.k_proj.weight": (d, d),
                   p + "attn.v_proj.weight": (d, d), p + "attn.o_proj.weight": (d, d),
                   p + "mlp.up_proj.weight": (ff, d), p + "mlp.up_proj.bias": (ff,),
                   p + "mlp.down_proj.weight": (d, ff), p + "mlp.down_proj.bias": (d,)}
    shapes |= {"norm.weight": (d,), "norm.bias": (d,)}

    def rand(shape: tuple[int, ...], scale: float) -> Any:
        return torch.randn(shape, generator=gen) * scale

    model = {name: rand(shape, 0.02) for name, shape in shapes.items()}
    optim_state = {i: {"step": torch.tensor(1000.0), "exp_avg": rand(t.shape, 1e-3),
                       "exp_avg_sq": rand(t.shape, 1e-3).square_()} for i, t in enumerate(model.values())}
    param_groups = [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                     "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
                     "fused": None, "params": list(range(len(model)))}]
    state = {
        "model/model.safetensors": model,
        "model/config.json": {"hidden_size": d, "num_hidden_layers": layers, "vocab_size": vocab},
        "optimizer.pt": {"state": optim_state, "param_groups": param_groups},
        "trainer_state.json": {"format": 1, "kind": "synthetic", "step": 1000},
    }
    return state, sum(t.numel() for t in model.values())


def state_bytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


def tiny_session(root: Path) -> Any:
    from relaytrain.config import SFTRun
    from relaytrain.contract import Contract
    from relaytrain.train.sft import SFTSession, quiet_transformers

    quiet_transformers()
    config = SFTRun(run_id="bench-async", kind="sft", model="tiny", max_steps=10_000)
    session = SFTSession(config, Contract.local(root / "tiny-contract", run_id="bench-async"), device="cpu")
    for _ in range(3):
        session.train_step()
    return session


def measure_saves(name: str, folder: Path, make_state, step_between, repeats: int) -> dict[str, Any]:
    """Alternating sync and async saves of ``make_state()``; times per mode."""
    from relaytrain.checkpoint import CheckpointManager

    out: dict[str, Any] = {"sync": {"state_ms": [], "block_ms": []},
                           "async": {"state_ms": [], "block_ms": [], "background_s": []}}
    step = 0
    with CheckpointManager(folder / "sync", keep_last=1) as sync_mgr, \
            CheckpointManager(folder / "async", keep_last=1, async_save=True) as async_mgr:
        for i in range(repeats):
            for mode in (("sync", "async") if i % 2 == 0 else ("async", "sync")):
                manager = sync_mgr if mode == "sync" else async_mgr
                step_between()
                step += 1
                manager.wait()  # nothing in flight: at a 30 s interval the previous write is long done
                t0 = time.perf_counter()
                state = make_state()
                t1 = time.perf_counter()
                manager.save(state, step, epoch=1, metadata={"run_id": "bench", "kind": name})
                t2 = time.perf_counter()
                del state
                out[mode]["state_ms"].append((t1 - t0) * 1000)
                out[mode]["block_ms"].append((t2 - t1) * 1000)
                if mode == "async":
                    manager.wait()
                    out[mode]["background_s"].append(time.perf_counter() - t2)
                print(f"    {name:<10} {mode:<5} #{i}  state {(t1 - t0) * 1000:8.1f} ms   save() blocked "
                      f"{(t2 - t1) * 1000:9.1f} ms"
                      + (f"   background write {out[mode]['background_s'][-1]:6.2f} s" if mode == "async" else ""),
                      flush=True)
    for mode in out.values():
        for key in list(mode):
            mode[f"{key}_median"] = statistics.median(mode[key])
        # the first save of a manager can differ from later ones (nothing to reuse yet, cold caches)
        mode["block_ms_first"] = mode["block_ms"][0]
        mode["block_ms_later_median"] = statistics.median(mode["block_ms"][1:] or mode["block_ms"])
    return out


def train_rate(session: Any, until: threading.Event | None, min_steps: int) -> tuple[float, int]:
    """Steps/s of ``session.train_step`` for ``min_steps`` steps, or until ``until`` is set."""
    t0, steps = time.perf_counter(), 0
    while (until is None and steps < min_steps) or (until is not None and not until.is_set()):
        session.train_step()
        steps += 1
    return steps / (time.perf_counter() - t0), steps


def interference(session: Any, folder: Path, state: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Training steps/s with no save in flight vs. while an async save of ``state`` is written."""
    from relaytrain.checkpoint import CheckpointManager

    rows = []
    with CheckpointManager(folder / "interference", keep_last=1, async_save=True) as manager:
        for i in range(repeats):
            before, _ = train_rate(session, None, 20)
            done = threading.Event()
            manager.save(state, 10_000 + i)
            t0 = time.perf_counter()
            waiter = threading.Thread(target=lambda done=done: (manager.wait(), done.set()))
            waiter.start()
            during, steps = train_rate(session, done, 0)
            write_s = time.perf_counter() - t0
            waiter.join()
            after, _ = train_rate(session, None, 20)
            base = (before + after) / 2
            rows.append({"rate_without": base, "rate_during": during, "steps_during": steps, "write_s": write_s,
                         "slowdown": 1 - during / base, "lost_s": write_s * max(0.0, 1 - during / base)})
            r = rows[-1]
            print(f"    training while writing #{i}: {r['rate_during']:.2f} steps/s during a {write_s:.2f} s write "
                  f"({steps} steps) vs {base:.2f} without (before {before:.2f}, after {after:.2f}): "
                  f"slowdown {r['slowdown'] * 100:.1f} %, ≈{r['lost_s']:.2f} s of training lost", flush=True)
    return {"rows": rows, "slowdown_median": statistics.median(r["slowdown"] for r in rows),
            "lost_s_median": statistics.median(r["lost_s"] for r in rows),
            "write_s_median": statistics.median(r["write_s"] for r in rows)}


def host_copy_reference(state: dict[str, Any], repeats: int) -> dict[str, float]:
    from relaytrain.checkpoint.state import to_host

    fresh, reuse = [], []
    def walk(src: Any, dst: Any, pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        if isinstance(src, dict):
            for key in src:
                walk(src[key], dst[key], pairs)
        elif isinstance(src, (list, tuple)):
            for a, b in zip(src, dst, strict=True):
                walk(a, b, pairs)
        elif hasattr(src, "copy_"):
            pairs.append((dst, src))
        return pairs

    for _ in range(repeats):
        t0 = time.perf_counter()
        snapshot = to_host(state)
        fresh.append(time.perf_counter() - t0)
        pairs = walk(state, snapshot, [])
        t0 = time.perf_counter()
        for dst, src in pairs:
            dst.copy_(src)
        reuse.append(time.perf_counter() - t0)
        del snapshot, pairs
    return {"to_host_ms_median": statistics.median(fresh) * 1000, "copy_into_existing_ms_median":
            statistics.median(reuse) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_checkpoint", description=__doc__.split("\n")[0])
    parser.add_argument("--interval-s", type=float, default=30.0, help="checkpoint interval to amortise over")
    parser.add_argument("--params-m", type=float, default=100.0, help="synthetic model size, millions of parameters")
    parser.add_argument("--repeats", type=int, default=3, help="saves per mode for the synthetic state")
    parser.add_argument("--tiny-repeats", type=int, default=7, help="saves per mode for the tiny SFT state")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trainer runs with 1 here)")
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoints are written (default: $TMPDIR)")
    parser.add_argument("--no-interference", action="store_true")
    parser.add_argument("--target-pct", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="relay-async-ckpt-", dir=args.dir))
    started = time.monotonic()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"async checkpoint overhead at a {args.interval_s:g} s interval; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {mem:.0f} GiB, torch {torch.__version__} on {torch.get_num_threads()} thread(s), "
          f"python "
          f"{platform.python_version()}; load {os.getloadavg()[0]:.1f}; folder {root}", flush=True)
    results: dict[str, Any] = {}
    try:
        session = tiny_session(root)
        tiny_bytes = state_bytes(session.checkpoint_state())
        print(f"  tiny SFT state: {sum(p.numel() for p in session.model.parameters()) / 1e6:.2f}M params, "
              f"{tiny_bytes / 2**20:.1f} MiB of tensors", flush=True)
        results["tiny"] = measure_saves("tiny-sft", root / "tiny", session.checkpoint_state, session.train_step,
                                        args.tiny_repeats)
        results["tiny"]["bytes"] = tiny_bytes

        t0 = time.perf_counter()
        big, params = synthetic_state(args.params_m)
        big_bytes = state_bytes(big)
        print(f"  synthetic state: {params / 1e6:.1f}M params, {big_bytes / 2**30:.2f} GiB of tensors "
              f"(built in {time.perf_counter() - t0:.1f} s)", flush=True)
        results["synthetic"] = measure_saves(f"{params / 1e6:.0f}M", root / "big", lambda: big, lambda: None,
                                             args.repeats)
        results["synthetic"]["bytes"] = big_bytes
        results["synthetic"]["params"] = params
        results["host_copy"] = host_copy_reference(big, 2)
        print(f"    host copy of the synthetic state: to_host {results['host_copy']['to_host_ms_median']:.0f} ms, "
              f"copy_ into existing buffers {results['host_copy']['copy_into_existing_ms_median']:.0f} ms", flush=True)
        if not args.no_interference:
            results["interference"] = interference(session, root, big, 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    interval_ms = args.interval_s * 1000
    print()
    print(f"{'state':<26} {'mode':<6} {'state() ms':>10} {'save() blocks ms':>17} {'(1st / later)':>17} "
          f"{'bg write s':>10} {'overhead @' + format(args.interval_s, 'g') + ' s':>15}")
    passed = True
    for key, label in (("tiny", f"tiny SFT ({results['tiny']['bytes'] / 2**20:.0f} MiB)"),
                       ("synthetic", f"{results['synthetic']['params'] / 1e6:.0f}M synthetic "
                                     f"({results['synthetic']['bytes'] / 2**30:.2f} GiB)")):
        for mode in ("sync", "async"):
            r = results[key][mode]
            pct = r["block_ms_median"] / interval_ms * 100
            r["overhead_pct"] = pct
            if mode == "async":
                passed &= pct <= args.target_pct
            bg = f"{r['background_s_median']:10.2f}" if mode == "async" else f"{'-':>10}"
            split = f"{r['block_ms_first']:.0f} / {r['block_ms_later_median']:.0f}"
            print(f"{label:<26} {mode:<6} {r['state_ms_median']:10.1f} {r['block_ms_median']:17.1f} {split:>17} {bg} "
                  f"{pct:14.2f}%")
    if "interference" in results:
        inter = results["interference"]
        block = results["synthetic"]["async"]["block_ms_median"] / 1000
        eff = (block + inter["lost_s_median"]) / args.interval_s * 100
        inter["effective_overhead_pct"] = eff
        print(f"training (tiny model) during a background write of the synthetic state: "
              f"{inter['slowdown_median'] * 100:.1f} % slower for {inter['write_s_median']:.1f} s "
              f"≈ {inter['lost_s_median']:.2f} s lost per save; effective async overhead of the synthetic state "
              f"(blocking + lost) ≈ {eff:.2f} % of a {args.interval_s:g} s interval")
    hc = results["host_copy"]
    print(f"host copy of the synthetic state: to_host {hc['to_host_ms_median']:.0f} ms vs copy_ into existing "
          f"buffers {hc['copy_into_existing_ms_median']:.0f} ms")
    print(f"target: async blocking ≤ {args.target_pct:g} % of the interval for both states: "
          f"{'PASS' if passed else 'FAIL'}; bench wall time {time.monotonic() - started:.0f} s; "
          f"load {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "pass": passed,
                                         "results": results}, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
