"""The official IR-Net model files on a CUDA GPU, timed the way the official trainers run them.

``../shared/reference/irnet_official/run.py`` (the side-by-side harness) runs the official model files
unmodified on a CPU: it patches ``torch.Tensor.cuda`` to the identity. This script imports that harness
and the official source, leaves ``.cuda()`` alone, and times on the GPU what one iteration of the
official loop costs (``CIFAR-10/ResNet20/1w1a/trainer.py``, ``CIFAR-10/VGG-Small/main.py``):

* the model in ``nn.DataParallel`` on the GPU, ``cudnn.benchmark = True``, float32 (no AMP in the
  official code), SGD with the recipe's lr / momentum / weight decay, EDE ``(k, t)`` of epoch 0;
* per train step: a pinned host batch copied to the GPU (``input.cuda()``; the DataLoader's
  ``pin_memory=True``), forward, loss, ``zero_grad``, backward, ``step``, then ``loss.item()`` and the
  top-1 count (the trainers' per-step ``.item()`` calls, a synchronization);
* per eval step: the copy, a ``no_grad`` forward, the top-1 count.

Not timed: the DataLoader's four worker processes (torchvision transforms on PIL images), which run
beside the step; the figure is an upper bound of the official loop's rate. Median over ``--iters``
after ``--warmup`` steps. One JSON line (``--json-out`` appends it).

    python3 bench/official_gpu.py --harness ../shared/reference/irnet_official/run.py \
        --src <extracted htqin/IR-Net> --arch resnet20_1w1a [--device cuda] [--json-out FILE]

``--device cpu`` runs the same timing on the CPU (``.cuda()`` patched as in the harness), to check
the script where no GPU is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from typing import Any


def load_harness(path: str):
    """The harness ``run.py`` as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location("irnet_official_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(step, warmup: int, iters: int, sync) -> list[float]:
    """Seconds of each of ``iters`` calls of ``step()`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + iters):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench(args: argparse.Namespace) -> dict[str, Any]:
    run = load_harness(args.harness)
    torch, nn = run.torch, run.nn
    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        run.patch_cuda = lambda: None  # the official modules' .cuda() calls then move to the GPU
        torch.backends.cudnn.benchmark = True  # R20:85, VGG-Small main.py likewise
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model_mod, ir_1w1a, files = run.import_official(args.src, args.arch)
    rec = run.RECIPES[args.arch]
    torch.manual_seed(args.seed)
    model, n_ir = run.build_model(model_mod, ir_1w1a, args.arch, False)
    t = run.log_up(rec["T_min"], rec["T_max"], 0, 1)
    run.set_kt(model, args.arch, run.k_of(t).to(device), t.to(device))
    model = nn.DataParallel(model).to(device) if cuda else model
    crit = nn.CrossEntropyLoss().to(device)
    opt = torch.optim.SGD(model.parameters(), rec["lr"], momentum=rec["momentum"], weight_decay=rec["weight_decay"])
    g = torch.Generator().manual_seed(args.seed)
    pin = (lambda x: x.pin_memory()) if cuda else (lambda x: x)
    xt, yt = pin(torch.randn(args.train_batch, 3, 32, 32, generator=g)), pin(torch.randint(0, 10, (args.train_batch,)))
    xe, ye = pin(torch.randn(args.eval_batch, 3, 32, 32, generator=g)), pin(torch.randint(0, 10, (args.eval_batch,)))

    def train_step():
        x, y = xt.to(device, non_blocking=True), yt.to(device, non_blocking=True)
        out = model(x)
        loss = crit(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item(), (out.argmax(1) == y).sum().item()

    @torch.no_grad()
    def eval_step():
        x, y = xe.to(device, non_blocking=True), ye.to(device, non_blocking=True)
        (model(x).argmax(1) == y).sum().item()

    model.train()
    tr = timed(train_step, args.warmup, args.iters, sync)
    model.eval()
    ev = timed(eval_step, args.warmup, args.iters, sync)
    med_tr, med_ev = statistics.median(tr), statistics.median(ev)
    return dict(
        mode="official_bench",
        arch=args.arch,
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
        ir_convs=n_ir,
        train_batch=args.train_batch,
        eval_batch=args.eval_batch,
        warmup=args.warmup,
        iters=args.iters,
        train_step_ms_median=round(med_tr * 1e3, 3),
        train_img_s=round(args.train_batch / med_tr, 1),
        eval_ms_median=round(med_ev * 1e3, 3),
        eval_img_s=round(args.eval_batch / med_ev, 1),
        official_files=files,
        torch=torch.__version__,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        tf32_convolutions=torch.backends.cudnn.allow_tf32 if cuda else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harness", required=True, help="path of irnet_official/run.py")
    ap.add_argument("--src", required=True, help="an extracted copy of htqin/IR-Net")
    ap.add_argument("--arch", required=True, choices=("resnet20_1w1a", "vgg_small_1w1a"))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    line = json.dumps(bench(args))
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
