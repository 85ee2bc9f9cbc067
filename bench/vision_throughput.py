"""Image encoder throughput: ragcli's ImageEncoder vs the same timm model called directly.

For the smallest variant of each seed backbone, both run on the same (32, 3, 224, 224) tensors with
the same weights; the two are timed alternately (ragcli, timm, timm, ragcli, ...) and medians taken,
so CPU contention from other processes hits both alike. Each batch is timed twice: by the process's
CPU time (what the batch cost; barely moved by other processes on a shared machine) and by the wall
clock. Images/s are per CPU-second. Prints a markdown table.

    .venv/bin/python bench/vision_throughput.py --threads 1 --repeats 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from vision.encoders import create_encoder

# (label, timm name, input side, model kwargs). HaloNet's 8x8 halo blocks need its stride-32 map to be a
# multiple of 8, so it runs at its native 256 (224 fails); NiNformer's token MLP is sized to the patch grid at
# construction, so it runs at its native (CIFAR) 32.
BACKBONES = [
    ("FocalNet", "focalnet_tiny_srf", 224, {}),
    ("DaViT", "davit_tiny", 224, {}),
    ("VOLO", "volo_d1_224", 224, {}),
    ("ConViT", "convit_tiny", 224, {}),
    ("TNT", "tnt_s_patch16_224", 224, {}),
    ("HaloNet", "halonet26t", 256, {}),
    ("VAN", "van_b0", 224, {}),
    ("ViT", "vit_tiny_patch16_224", 224, {}),
    ("ViT+EViT (keep 0.7)", "evit_tiny_patch16_224", 224, {"keep_rate": 0.7}),
    ("MOAT", "moat_tiny_0", 224, {}),
    ("NiNformer", "ninformer", 32, {}),
    ("RMT", "rmt_t", 224, {}),
    ("DiNAT", "dinat_mini", 224, {}),
    ("OverLoCK", "overlock_xt", 224, {}),
    ("Swin+VSA", "swin_vsa_tiny", 224, {}),
    ("DHVT", "dhvt_tiny", 224, {}),
    ("SpaRTAN", "spartan_t", 224, {}),
    ("AttNet", "attnet_xxs", 224, {}),
]


def _seconds(fn, pixels: torch.Tensor) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn(pixels)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(name: str, size: int, kwargs: dict, batch: int, repeats: int) -> dict:
    """Median images/s of ragcli's encoder and of timm's model on identical weights and tensors."""
    encoder = create_encoder(f"timm:{name}", image_size=size, **kwargs).eval()
    reference = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    reference.load_state_dict(encoder.backbone.model.state_dict())
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours, theirs = [], []
    with torch.inference_mode():
        torch.testing.assert_close(encoder(pixels), reference(pixels))  # same function; also the warm-up
        for i in range(repeats):  # ragcli, timm, timm, ragcli, ...: neither side always goes first
            pair = [(encoder, ours), (reference, theirs)]
            for fn, times in pair if i % 2 == 0 else pair[::-1]:
                times.append(_seconds(fn, pixels))
    cpu = [statistics.median(t[0] for t in times) for times in (ours, theirs)]
    wall = [statistics.median(t[1] for t in times) for times in (ours, theirs)]
    return {"ragcli": batch / cpu[0], "timm": batch / cpu[1], "cpu_ratio": cpu[0] / cpu[1], "wall_ratio": wall[0] / wall[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4, help="timed batches per side (after the check batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CPU is shared)")
    parser.add_argument("--only", nargs="*", help="labels or timm names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [b for b in BACKBONES if not args.only or b[0] in args.only or b[1] in args.only]
    print(f"batch {args.batch}, CPU, {args.threads} thread(s), median of {args.repeats} interleaved batches; "
          "images/s per CPU-second\n")
    print("| backbone | timm model | input | ragcli images/s | timm images/s | ratio ragcli/timm (CPU time) "
          "| ratio (wall clock) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for label, name, size, kwargs in rows:
        r = measure(name, size, kwargs, args.batch, args.repeats)
        print(f"| {label} | `{name}` | {size}x{size} | {r['ragcli']:.2f} | {r['timm']:.2f} | {r['cpu_ratio']:.3f} "
              f"| {r['wall_ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
