#!/usr/bin/env python3
"""Projects data-parallel AlexNet training to N = 8 ... 1,024 GPUs (README, "Scaling model").

step time = compute(B/N) + the ring all-reduce's share not hidden behind the backward pass

- compute(b): b images at the single-GPU rate MEASURED on one H200 (docs/gpu-notes.md, fp32,
  batch 128: 4,425 images/s), taken as linear in b (optimistic below ~128 images per GPU, where
  a GPU is no longer full).
- ring all-reduce of G bytes over N ranks (Patarasuk & Yuan 2009; NCCL's ring): each rank sends
  and receives 2 (N-1)/N G bytes over its link, in 2 (N-1) latency-bound steps per bucket:
  t = 2 (N-1)/N * G / bw + 2 (N-1) * buckets * alpha.
- overlap: the fully connected layers hold 96% of the gradient bytes and finish first in the
  backward pass, so their sums can travel while the convolutions' backward runs: the hidden
  share is at most the convolution backward time, 2/3 (backward's share of a step's FLOPs) x 92%
  (the convolutions' share of the FLOPs) of compute, scaled by HIDE_EFFICIENCY, the fraction of
  that window the implementation actually uses: 1.0 (all of it) unless given as the first
  argument. It was to be calibrated with `mpirun -np 2 alexnet-cli bench` on the CPU, but that
  measurement on the shared 2-core box was inconclusive (README); so it is ASSUMED.
- MEASURED: the single-H200 rate and the gradient bytes. Everything else is PROJECTED.

Run: python3 scripts/scaling_model.py   (prints the Markdown table the README shows)
"""

GRAD_BYTES = 243.9e6  # the paper's net: 60.97 M fp32 parameters (counted by `bench`)
GPU_IMAGES_PER_S = 4425.0  # measured, one H200, fp32, batch 128 (docs/gpu-notes.md)
BUCKETS = 10  # 25 MB buckets (PyTorch DDP's default, src/data_parallel.rs)
ALPHA_S = 5e-6  # per-message latency of an InfiniBand hop (typical, not measured here)
BACKWARD_SHARE = 2.0 / 3.0  # backward = 2 of the 3 products of a step (bench's FLOP count)
CONV_SHARE = 0.92  # the convolutions' share of the paper net's multiply-adds (arch.rs plan)
IMAGES_PER_EPOCH = 1_281_167  # ILSVRC-2012 training set
LINKS = {
    "100 Gb/s InfiniBand": 12.5e9,  # bytes/s per GPU, one HCA per GPU
    "NVLink (H200, 1 node)": 450e9,  # bytes/s per direction, NVLink 4 (vendor figure)
}


def allreduce_s(n, bw):
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * GRAD_BYTES / bw + 2 * (n - 1) * BUCKETS * ALPHA_S


def step(n, global_batch, bw, hide_efficiency):
    per_gpu = global_batch / n
    compute = per_gpu / GPU_IMAGES_PER_S
    comm = allreduce_s(n, bw)
    window = compute * BACKWARD_SHARE * CONV_SHARE * hide_efficiency
    exposed = max(0.0, comm - window)
    return per_gpu, compute, comm, exposed, compute + exposed


def table(global_batch, hide_efficiency, rows):
    print(
        f"| GPUs | link | images/GPU | compute ms | all-reduce ms | exposed ms | step ms "
        f"| images/s | efficiency | 95 epochs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, link in rows:
        bw = LINKS[link]
        per_gpu, compute, comm, exposed, t = step(n, global_batch, bw, hide_efficiency)
        rate = global_batch / t
        eff = rate / (n * GPU_IMAGES_PER_S)
        minutes = 95 * IMAGES_PER_EPOCH / rate / 60
        print(
            f"| {n:,} | {link} | {per_gpu:,.0f} | {compute * 1e3:.1f} | {comm * 1e3:.1f} "
            f"| {exposed * 1e3:.1f} | {t * 1e3:.1f} | {rate:,.0f} | {eff:.0%} | {minutes:.1f} min |"
        )


if __name__ == "__main__":
    import sys

    hide = 1.0
    if len(sys.argv) > 1:
        hide = float(sys.argv[1])
    rows = [(8, "NVLink (H200, 1 node)")] + [
        (n, "100 Gb/s InfiniBand") for n in (8, 16, 32, 64, 128, 256, 512, 1024)
    ]
    for batch in (32_768, 65_536):
        print(f"\nGlobal batch {batch:,}, hide efficiency {hide:.2f}:\n")
        table(batch, hide, rows)
