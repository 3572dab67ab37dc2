"""Crash consistency of train.py: kill a run at random moments, restart it with the same command
(``--config.resume_dir=auto``) each time, and compare the end with an uninterrupted run.

    python bench/crash_consistency.py --kills 20 --signal KILL --out /tmp/crash
    python bench/crash_consistency.py --kills 10 --signal TERM --out /tmp/crash_term

Each round starts ``train.py`` and sends the signal after a uniform random delay in
``[0, --max_delay]`` seconds (start-up, data loading, steps, evaluation and checkpoint saves all get
hit). A round "succeeded" when the restarted command ran (exit 0, or the signal's own kill) and left
only complete checkpoints; with TERM it must exit 0. Prints one JSON line: kills, restarts that
succeeded, checkpoints found damaged (moved to ``checkpoints_unreadable``), and whether the final
parameters and test accuracy equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--config=configs/mnistnet_mnist.py",
    "--config.train_size=4096",
    "--config.num_epochs=4",
    "--config.warmup_epochs=0.5",
    "--config.log_every_steps=8",
    "--config.eval_batch_size=1000",
    "--config.resume_dir=auto",
]


def command(workdir: pathlib.Path) -> list[str]:
    return [sys.executable, "train.py", *TINY, f"--workdir={workdir}"]


def final(workdir: pathlib.Path) -> tuple[dict, dict]:
    """summary.json and the final parameters (as lists) of a finished run."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from configs import mnistnet_mnist
    from irnet_jax import checkpointing as ckpt
    from irnet_jax.train_state import create_train_state

    config = mnistnet_mnist.get_config()
    step = ckpt.complete_steps(str(workdir))[-1]
    state = ckpt.restore_state(str(workdir), step, create_train_state(config).state)
    import jax

    leaves = [np.asarray(a) for a in jax.tree.leaves(state.params)]
    return json.loads((workdir / "summary.json").read_text()), {"step": step, "leaves": leaves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    parser.add_argument("--max_delay", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"crash_consistency: error: --out {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    rng = random.Random(args.seed)

    reference = out / "uninterrupted"
    subprocess.run(command(reference), cwd=REPO, env=env, check=True, capture_output=True)

    workdir, rounds = out / "killed", []
    for _ in range(args.kills):
        delay = rng.uniform(0, args.max_delay)
        p = subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(getattr(signal, f"SIG{args.signal}"))
        _, err = p.communicate()
        ok = p.returncode == 0 if args.signal == "TERM" else p.returncode in (0, -signal.SIGKILL)
        rounds.append(
            {
                "delay_s": round(delay, 2),
                "returncode": p.returncode,
                "ok": ok,
                "error": err.decode()[-300:] if not ok else "",
            }
        )
    last = subprocess.run(command(workdir), cwd=REPO, env=env, capture_output=True, text=True)

    summary_ref, params_ref = final(reference)
    summary, params = final(workdir)
    damaged = workdir / "checkpoints_unreadable"
    result = {
        "signal": args.signal,
        "kills": args.kills,
        "max_delay_s": args.max_delay,
        "rounds_ok": sum(r["ok"] for r in rounds),
        "final_restart_returncode": last.returncode,
        "checkpoints_found_damaged": len(list(damaged.iterdir())) if damaged.exists() else 0,
        "final_step": params["step"],
        "params_equal_uninterrupted": params["step"] == params_ref["step"]
        and all((a == b).all() for a, b in zip(params["leaves"], params_ref["leaves"])),
        "test_accuracy": summary.get("final_test_accuracy"),
        "test_accuracy_uninterrupted": summary_ref.get("final_test_accuracy"),
        "rounds": rounds,
    }
    print(json.dumps(result))
    shutil.rmtree(reference / "tensorboard", ignore_errors=True)


if __name__ == "__main__":
    main()
