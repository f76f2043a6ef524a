"""Benchmark the warp core: memory of a meta-update versus adaptation length, and speed per
replayed state versus the original implementation's way of replaying states.

Model: the Omniglot classifier size: 4 blocks of [conv3x3 (64 filters) -> 2x2 max-pool ->
batch norm -> ReLU], a warp conv3x3 64->64 after each block, Linear(64 -> 20); 28x28 inputs,
batches of 20 images, 20 classes. Data are synthetic images (timings and memory do not depend
on pixel values).

1. Memory: peak memory of one meta-update after K adaptation steps, for this WarpGrad
   (Algorithm 2 over the K + 1 replayed states, one meta-step per state as the original) and
   for a MAML-style meta-gradient that backpropagates through the K steps. On CPU the peak is
   measured with ``torch.profiler`` (``profile_memory=True``): every allocation and free of
   PyTorch's CPU allocator during the meta-update, summed in time order; the peak is the
   highest running total above the memory held when the meta-update starts. On CUDA it is
   ``torch.cuda.max_memory_allocated()`` minus the memory allocated at the start. The replay
   buffer itself (adaptation states, on CPU, filled during adaptation) is listed separately.
2. Speed: time per replayed state of the meta-update. Baseline, written here the way the
   original did it: for every state, load it into the module's state dict, build a new
   ``DataLoader`` over the task's dataset and draw two batches (by default, ``--baseline-data
   png``, each image is read from its 28x28 PNG file and distorted with PIL item by item, as the
   original's torchvision-style Omniglot dataset did; ``memory`` keeps the images in memory
   and distorts them with torch, a cheaper baseline), then Algorithm 2 with autograd on the
   module and one meta-optimiser step. This implementation: the task's batches are cached once at
   ``register_task`` (its cost is included, amortised over the task's states), states are
   replayed functionally, one meta-step per state (``meta_batch_size=1``) or in vmapped
   meta-batches.

Usage::

    python scripts/bench_warp.py                      # full run on CPU (minutes)
    python scripts/bench_warp.py --ks 1 10 --speed-tasks 1 --speed-steps 5   # quick check
    python scripts/bench_warp.py --device cuda

The figures, with the commands and machines that gave them, are in docs/warp.md ("Benchmark:
memory and speed").
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warp_rl  # torch-free until its classes are used

# torch and PIL are imported where they are used, after the arguments are parsed, so that
# --help answers at once.
if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------


def conv_model(
    filters: int = 64, classes: int = 20
) -> tuple[nn.Module, list[nn.Module], list[nn.Module]]:
    """The warped Omniglot classifier; returns (model, adaptable modules, warp modules)."""
    from torch import nn

    layers: list[nn.Module] = []
    adapt: list[nn.Module] = []
    warp: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        block = [nn.Conv2d(channels, filters, 3, padding=1), nn.MaxPool2d(2),
                 nn.BatchNorm2d(filters), nn.ReLU()]
        w = nn.Conv2d(filters, filters, 3, padding=1)
        layers += [*block, w]
        adapt += [block[0], block[2]]
        warp.append(w)
        channels = filters
    head = nn.Linear(filters, classes)
    layers += [nn.Flatten(), head]
    adapt.append(head)
    return nn.Sequential(*layers), adapt, warp


class AffineImages:
    """Images held as uint8 tensors; each access applies a random affine distortion (rotation
    0-360 degrees, translation 0.2, scale 0.8-1.2), as the original Omniglot pipeline did per
    image (there with PIL, from disk). A map-style dataset: ``DataLoader`` takes any object with
    ``__len__`` and ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        img = self.images[i].float().div(255)[None, None]  # (1, 1, 28, 28)
        angle = torch.rand(()) * 2 * math.pi
        scale = 0.8 + 0.4 * torch.rand(())
        shift = (torch.rand(2) - 0.5) * 0.4
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[0]]),
                             torch.stack([sin, cos, shift[1]])]).unsqueeze(0)
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, align_corners=False)[0], self.labels[i]


class PNGAffineImages:
    """The original pipeline, item by item: each access opens the image's 28x28 PNG file from
    disk with PIL (as torchvision's ``Omniglot`` dataset did), applies a random affine
    distortion with PIL (``RandomAffine((0, 360), (0.2, 0.2), (0.8, 1.2))``) and converts it to
    a float tensor (``ToTensor``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, folder: Path) -> None:
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        self.paths = []
        for i, img in enumerate(images):
            path = folder / f"{i:05d}.png"
            Image.fromarray(img.numpy()).save(path)
            self.paths.append(path)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        from PIL import Image

        img = Image.open(self.paths[i], mode="r").convert("L")
        angle = float(torch.rand(())) * 360.0
        scale = 0.8 + 0.4 * float(torch.rand(()))
        dx, dy = ((torch.rand(2) - 0.5) * 0.4 * 28).tolist()
        img = img.rotate(angle, resample=Image.NEAREST, translate=(dx, dy))
        w, h = img.size
        inv = 1.0 / scale  # scale about the centre: output pixel -> input pixel
        img = img.transform((w, h), Image.AFFINE,
                            (inv, 0, w / 2 * (1 - inv), 0, inv, h / 2 * (1 - inv)),
                            resample=Image.NEAREST)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        return x, self.labels[i]


class RandomSampler:
    """The original's sampler: ``iterations * batch_size`` random indices per pass."""

    def __init__(self, n: int, iterations: int, batch_size: int) -> None:
        self.n, self.total = n, iterations * batch_size

    def __iter__(self):
        import torch

        return iter((torch.randperm(self.total) % self.n).tolist())

    def __len__(self) -> int:
        return self.total


def make_dataset(classes: int, per_class: int, seed: int) -> AffineImages:
    import torch

    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(classes * per_class, 28, 28, generator=g) > 0.8).to(torch.uint8) * 255
    labels = torch.arange(classes).repeat_interleave(per_class)
    return AffineImages(images, labels)


def loader(ds: AffineImages | PNGAffineImages, batch: int, iterations: int,
           workers: int) -> DataLoader:
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch, sampler=RandomSampler(len(ds), iterations, batch),
                      num_workers=workers)


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MB) allocated by ``fn`` above what was allocated when it started."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    total = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage
        peak = max(peak, total)
    return peak / 2**20


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def adapt_task(model: warp_rl.Warp, task: Any, lr: float, device: torch.device) -> None:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.adapt_parameters(), lr=lr)
    for x, y in task:
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        opt.step()
        opt.zero_grad()


def tensor_task(ds: AffineImages, batch: int, steps: int, seed: int) -> warp_rl.TensorTask:
    import torch

    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return warp_rl.TensorTask(x, ds.labels, batch_size=batch, steps=steps, seed=seed)


# ---------------------------------------------------------------------------------------------
# 1. memory
# ---------------------------------------------------------------------------------------------


def warpgrad_memory(k: int, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net, adapt, warp = conv_model(args.filters, args.classes)
    net.to(device)
    updater = warp_rl.DualUpdater(nn.CrossEntropyLoss(), meta_batch_size=1)
    model = warp_rl.Warp(net, adapt, warp, updater,
                         warp_rl.ReplayBuffer(max_states_per_task=None), step_size=args.lr)
    meta_opt = torch.optim.SGD(model.meta_parameters(), lr=args.lr)
    task = tensor_task(make_dataset(args.classes, 15, 0), args.batch, k, 0)
    task.x, task.y = task.x.to(device), task.y.to(device)
    model.init_adaptation()
    model.register_task(task)
    model.collect()
    adapt_task(model, task, args.lr, device)
    model.no_collect()
    buffer_mb = sum(
        t.numel() * t.element_size() for s in model.buffer.tasks[0].states
        for t in [*s.params.values(), *s.buffers.values()]
    ) / 2**20
    peak = peak_memory(lambda: model.backward(meta_opt.step), device)
    return peak, buffer_mb


def maml_memory(k: int, args: argparse.Namespace, device: torch.device) -> float:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    torch.manual_seed(0)
    net, adapt, _ = conv_model(args.filters, args.classes)
    net.to(device).train()
    part = warp_rl.partition(net, adapt)
    task = tensor_task(make_dataset(args.classes, 15, 0), args.batch, k + 1, 0)
    batches = [(x.to(device), y.to(device)) for x, y in task]

    def meta_gradient() -> None:
        fixed = part.warp_dict()
        theta = part.adapt_dict()
        for x, y in batches[:-1]:
            loss = F.cross_entropy(functional_call(net, {**fixed, **theta}, (x,)), y)
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
            theta = {n: t - args.lr * g for (n, t), g in zip(theta.items(), grads, strict=True)}
        x, y = batches[-1]
        F.cross_entropy(functional_call(net, {**fixed, **theta}, (x,)), y).backward()

    return peak_memory(meta_gradient, device)


# ---------------------------------------------------------------------------------------------
# 2. speed
# ---------------------------------------------------------------------------------------------


def collect_states(args: argparse.Namespace, device: torch.device, png_folder: Path):
    """Adapt ``speed_tasks`` tasks for ``speed_steps`` steps; return model, datasets, states.
    With ``--baseline-data png`` the images are written to ``png_folder``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net, adapt, warp = conv_model(args.filters, args.classes)
    net.to(device)
    datasets: list[AffineImages | PNGAffineImages] = [make_dataset(args.classes, 15, t)
                                                      for t in range(args.speed_tasks)]
    if args.baseline_data == "png":  # same images, read back from PNG files item by item
        datasets = [PNGAffineImages(ds.images, ds.labels, png_folder / f"task{t}")
                    for t, ds in enumerate(datasets)]
    updater = warp_rl.DualUpdater(nn.CrossEntropyLoss(), init_objective=None)
    model = warp_rl.Warp(net, adapt, warp, updater, warp_rl.ReplayBuffer(), step_size=args.lr)
    states: list[tuple[int, dict[str, torch.Tensor]]] = []
    for t, ds in enumerate(datasets):
        model.init_adaptation()
        model.register_task(loader(ds, args.batch, args.speed_steps, 0))
        model.collect()
        adapt_task(model, loader(ds, args.batch, args.speed_steps, 0), args.lr, device)
        model.no_collect()
        states += [(t, {**s.params, **s.buffers}) for s in model.buffer.tasks[t].states]
    model.buffer.clear()
    return model, datasets, states


def time_baseline(model: warp_rl.Warp, datasets, states, args, device) -> float:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    net = model.model
    net.train()
    names = model.partition.adapt_names
    warp_params = model.warp_parameters()
    for p in warp_params:
        p.requires_grad_(True)
    meta_opt = torch.optim.SGD(warp_params, lr=args.lr)
    order = torch.randperm(len(states)).tolist()
    sync(device)
    start = time.perf_counter()
    for i in order:
        t, state = states[i]
        net.load_state_dict(state, strict=False)  # the state into the module
        it = iter(loader(datasets[t], args.batch, args.speed_steps, args.workers))  # new loader
        (x1, y1), (x2, y2) = next(it), next(it)
        x1, y1, x2, y2 = x1.to(device), y1.to(device), x2.to(device), y2.to(device)
        params = dict(net.named_parameters())
        loss1 = F.cross_entropy(net(x1), y1)
        grads = torch.autograd.grad(loss1, [params[n] for n in names], create_graph=True)
        stepped = {n: params[n] - args.lr * g for n, g in zip(names, grads, strict=True)}
        F.cross_entropy(functional_call(net, stepped, (x2,)), y2).backward()
        meta_opt.step()
        meta_opt.zero_grad()
        for p in net.parameters():
            p.grad = None
    sync(device)
    return (time.perf_counter() - start) / len(states)


def time_warpgrad(model: warp_rl.Warp, datasets, states, args, device,
                  meta_batch_size: int) -> tuple[float, str]:
    import torch
    from torch import nn

    model.updater = warp_rl.DualUpdater(nn.CrossEntropyLoss(), init_objective=None,
                                        meta_batch_size=meta_batch_size,
                                        vmap_chunk_size=meta_batch_size, batching=args.batching)
    meta_opt = torch.optim.SGD(model.warp_parameters(), lr=args.lr)
    buffer = model.buffer
    buffer.clear()
    start = time.perf_counter()
    for ds in datasets:  # registration caches each task's batches once (timed)
        buffer.new_task(loader(ds, args.batch, args.speed_steps, args.workers))
    registration = time.perf_counter() - start
    names, buffer_names = model.partition.adapt_names, model.partition.adapt_buffer_names
    for t, state in states:  # what collection stored during adaptation (not timed)
        buffer.add(t, warp_rl.State(params={n: state[n] for n in names},
                                    buffers={n: state[n] for n in buffer_names}))
    sync(device)
    start = time.perf_counter()
    info = model.backward(meta_opt.step)
    sync(device)
    label = info.batching
    if model.updater.vmap_check_error is not None:
        label += f", vmap check error {model.updater.vmap_check_error:.1e}"
    return (registration + time.perf_counter() - start) / len(states), label


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100],
                        help="adaptation steps before the meta-update (memory table)")
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--speed-tasks", type=int, default=2, help="tasks replayed (speed)")
    parser.add_argument("--speed-steps", type=int, default=20,
                        help="adaptation steps per task (speed); states = steps + 1")
    parser.add_argument("--meta-batch", type=int, default=8,
                        help="states per vmapped meta-batch (speed)")
    parser.add_argument("--batching", default="auto", choices=["auto", "vmap", "loop"],
                        help="DualUpdater batching for the meta-batched row (speed)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers (the original's default: 0)")
    parser.add_argument("--baseline-data", default="png", choices=["png", "memory"],
                        help="speed: images read from 28x28 PNG files with a PIL affine per item "
                             "(png, the original's pipeline) or held in memory with a torch "
                             "affine per item (memory)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}")

    if not args.skip_memory:
        print("\nPeak memory of one meta-update (MB above the memory held at its start)")
        print(f"{'K steps':>8} | {'WarpGrad':>9} | {'MAML unrolled':>13} | {'buffer (CPU)':>12}")
        rows = []
        for k in args.ks:
            warp_mb, buffer_mb = warpgrad_memory(k, args, device)
            maml_mb = maml_memory(k, args, device)
            rows.append((k, warp_mb, maml_mb))
            print(f"{k:>8} | {warp_mb:>9.1f} | {maml_mb:>13.1f} | {buffer_mb:>12.1f}", flush=True)
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            print(f"growth K={first[0]} -> K={last[0]}: WarpGrad {last[1] / first[1]:.2f}x, "
                  f"MAML {last[2] / first[2]:.1f}x")

    if not args.skip_speed:
        with tempfile.TemporaryDirectory(prefix="bench_warp_png_") as png_folder:
            model, datasets, states = collect_states(args, device, Path(png_folder))
            print(f"\nTime per replayed state of the meta-update ({len(states)} states, "
                  f"{args.speed_tasks} tasks, {args.baseline_data} data, "
                  f"DataLoader workers {args.workers})")
            time_baseline(model, datasets, states[:2], args, device)  # warm-up
            base = time_baseline(model, datasets, states, args, device)
            print(f"{'method':<62} | {'ms/state':>8} | {'speed-up':>8}")
            label = "baseline (state_dict + new DataLoader per state)"
            print(f"{label:<62} | {base * 1e3:>8.1f} | {1.0:>7.1f}x", flush=True)
            for mbs in (1, args.meta_batch):
                time_warpgrad(model, datasets, states[: min(mbs, 4)], args, device, mbs)  # warm-up
                t, batching = time_warpgrad(model, datasets, states, args, device, mbs)
                label = f"warp_rl, meta_batch_size={mbs} ({batching})"
                print(f"{label:<62} | {t * 1e3:>8.1f} | {base / t:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
