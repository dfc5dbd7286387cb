#!/usr/bin/env python3
"""The same AlexNet as alexnet-rs, in PyTorch, timed the same way: training steps per second.

The model matches `src/arch.rs` (the paper's two-column net, input 227):
  conv1 96x11x11/4 -> ReLU -> LRN per 48-channel column -> maxpool 3/2
  conv2 256x5x5 pad 2, groups 2 -> ReLU -> LRN per column -> maxpool 3/2
  conv3 384x3x3 pad 1 (reads both columns) -> ReLU
  conv4 384x3x3 pad 1, groups 2 -> ReLU
  conv5 256x3x3 pad 1, groups 2 -> ReLU -> maxpool 3/2
  fc6 4096 -> ReLU -> dropout 0.5 ; fc7 4096 -> ReLU -> dropout 0.5 ; fc8 1000
LRN: the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75 with alpha NOT divided by n. PyTorch's
LocalResponseNorm divides alpha by n, so it gets alpha = 5e-4. Each column is normalised on its
own (the paper's GPUs normalise only their own kernel maps): split, LRN each half, concatenate.

One step = forward, cross-entropy loss, backward, SGD (momentum 0.9, weight decay 5e-4), on
random data (the data pipeline is not timed). Prints ms/step and images/s. With --inference, one
step is a test-mode forward (model.eval(), torch.inference_mode()) and softmax, at --batch and at
batch 1 (latency), as `alexnet-cli bench --inference` times it.

  python3 benches/compare_pytorch.py --threads 2 --batch 128 --steps 3
  python3 benches/compare_pytorch.py --device cuda --steps 20          # fp32, TF32 off
  python3 benches/compare_pytorch.py --inference --threads 2 --batch 128 --steps 3
"""

import argparse
import time

import torch
import torch.nn as nn


class ColumnLRN(nn.Module):
    """LRN applied separately to each of `columns` equal channel groups."""

    def __init__(self, columns: int):
        super().__init__()
        self.columns = columns
        # alpha 5e-4 = the paper's 1e-4 times n, because PyTorch divides by n.
        self.lrn = nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)

    def forward(self, x):
        return torch.cat([self.lrn(c) for c in x.chunk(self.columns, dim=1)], dim=1)


def alexnet(classes: int = 1000) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(inplace=True),
        ColumnLRN(2),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(inplace=True),
        ColumnLRN(2),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, classes),
    )


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_inference(model: nn.Module, dev: torch.device, batch: int, args) -> None:
    """Median time of a test-mode forward and softmax at `batch`, probabilities on the host."""
    x = torch.randn(batch, 3, 227, 227, device=dev)

    def forward() -> None:
        with torch.inference_mode():
            torch.softmax(model(x), dim=1).cpu()

    forward()  # warm-up
    sync(dev)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        forward()
        sync(dev)
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    where = f"{args.threads} threads" if dev.type == "cpu" else torch.cuda.get_device_name()
    print(f"pytorch {torch.__version__} {dev.type} ({where}) inference, batch {batch}: "
          f"median {median * 1e3:.2f} ms, {batch / median:.1f} images/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: strict fp32)")
    ap.add_argument("--inference", action="store_true",
                    help="time the test-mode forward at --batch and at batch 1 instead of training")
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32

    if args.inference:
        model = alexnet().to(dev).eval()
        for batch in dict.fromkeys([args.batch, 1]):
            time_inference(model, dev, batch, args)
        return

    model = alexnet().to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 227, 227, device=dev)
    labels = torch.randint(0, 1000, (args.batch,), device=dev)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up: allocations, cuDNN autotuning
    sync(dev)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        sync(dev)
        times.append(time.perf_counter() - t)
    best, mean = min(times), sum(times) / len(times)
    where = f"{args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"pytorch {torch.__version__} {args.device} ({where}), batch {args.batch}, "
          f"{args.steps} steps, loss {loss:.3f}")
    print(f"ms/step: best {best * 1e3:.0f}, mean {mean * 1e3:.0f}")
    print(f"images/s: best {args.batch / best:.1f}, mean {args.batch / mean:.1f}")


if __name__ == "__main__":
    main()
