"""Measure the UNet on the current device: params, FLOPs, training img/s, DDIM sampling img/s, memory.

Usage:
    python scripts/benchmark.py                           # all named configs: ADM's fp32, ours fp32, ours auto
    python scripts/benchmark.py --configs adm_cifar10 --batch 32 --iters 5
    python scripts/benchmark.py --configs mnist_demo --precision fp32 bf16 --memory-format channels_last
    python scripts/benchmark.py --configs mnist_demo --profile 12   # also where our steps' time goes, by operator

For each config it builds the model once per path in one process and times the paths side by side:
- ``reference fp32``: a straightforward ADM implementation -- einsum attention on conv1d projections,
  fp32 (``attention_backend=einsum``); on CUDA also ``ADM fp16``: ADM's own mixed precision (the
  torso cast to fp16 by ``convert_to_fp16``, fp32 master weights, a loss scale and its overflow
  check every step, as its ``MixedPrecisionTrainer``);
- ``ours <precision>``: scaled_dot_product_attention with linear projections, in the precision and
  layout that ``runtime.precision.resolve`` gives (``auto`` as ``train.precision: auto`` resolves on this
  device: bf16 on CUDA and on a CPU with AVX512-BF16 or AMX, channels_last on AMX; fp32 elsewhere).
Training = forward + backward + AdamW step on random data (median over ``--iters`` after a warm-up);
sampling = DDIM steps (one forward each) under inference_mode, reported as DDIM-50 img/s.
``GFLOP/s``: the training step's achieved rate (3 x forward FLOPs per image x img/s), beside the device's
measured dense matmul peak in fp32 and bf16 (a 1024^2 matmul on CPU; printed first).
On CUDA it also prints the MFU against the dense bf16 peak (``--peak-tflops``, H100/H200: 989).
Ratios are what to read on a shared machine: every path runs in the same process, interleaved.
"""

import argparse
import resource
import statistics
import time

import torch

from guided_diffusion.runtime.precision import FP32, describe_cpu, resolve
from guided_diffusion.script_util import create_gaussian_diffusion, create_model

CONFIGS = {
    # ADM's CIFAR-10 config (Ho et al. / Nichol & Dhariwal): 128 ch, 3 res blocks, attention 16,8.
    "adm_cifar10": dict(image_size=32, in_channels=3, num_channels=128, num_res_blocks=3, channel_mult="1,2,2,2",
                        attention_resolutions="16,8", dropout=0.1, num_heads=4),
    # "small": a 6.5M UNet at 32 px (64 ch, 2 res blocks, 1,2,2, attention 16).
    "small": dict(image_size=32, in_channels=3, num_channels=64, num_res_blocks=2, channel_mult="1,2,2",
                  attention_resolutions="16", dropout=0.0, num_heads=4),
    # The same on MNIST-like 28x28x1 images (attention at 14x14).
    "mnist": dict(image_size=28, in_channels=1, num_channels=64, num_res_blocks=2, channel_mult="1,2,2",
                  attention_resolutions="14", dropout=0.0, num_heads=4),
    # The model of yaml/mnist/*.yaml (the CPU continual demo).
    "mnist_demo": dict(image_size=28, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                       attention_resolutions="7", num_head_channels=32, norm_groups=8, class_cond=True,
                       num_classes=10),
}


def build(name, backend):
    kw = dict(CONFIGS[name])
    return create_model(**kw, attention_backend=backend)


def forward_flops(model, x, t, y):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y) if y is not None else model(x, t)
    return counter.get_total_flops() / x.shape[0]


def matmul_peaks(device, n=1024, iters=10):
    """Measured dense matmul rates (GFLOP/s) in fp32 and bf16: the ceiling a step's achieved rate is read
    against (a CPU without native bf16 shows a low bf16 figure)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = 2 * n**3 / statistics.median(times) / 1e9
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_second(step, batch, device, iters):
    """``batch`` over the median time of ``step()`` in ``iters`` runs after one warm-up run."""
    step()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def time_train(model, x, t, y, device, precision, iters):
    """Training img/s of ``model`` under ``precision`` (a ``runtime.precision.Precision``; "adm_fp16": ADM's
    own fp16 trainer), with the optimizer ``TrainLoop`` builds."""
    if precision == "adm_fp16":
        return time_train_adm_fp16(model, x, t, y, device, iters)
    precision.to_layout(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda", foreach=device.type != "cuda")
    target = torch.randn_like(x)
    kwargs = {"y": y} if y is not None else {}
    x = precision.input(x)

    def step():
        with precision.autocast(device):
            out = model(x, t, **kwargs)
        loss = ((out.float() - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return images_per_second(step, x.shape[0], device, iters)


def profile_train(model, x, t, y, device, precision, iters, rows) -> str:
    """Where one training step's time goes, by operator (``torch.profiler``, self time, the top ``rows``):
    the step ``time_train`` times, run ``iters`` times after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    precision.to_layout(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda", foreach=device.type != "cuda")
    target = torch.randn_like(x)
    kwargs = {"y": y} if y is not None else {}
    x = precision.input(x)

    def step():
        with precision.autocast(device):
            out = model(x, t, **kwargs)
        loss = ((precision.output(out) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / iters / 1000
    lines = [f"  profiled: {total:.0f} ms/step of operator self time (median-free sum over {iters} steps / {iters})",
             f"  {'operator':<58} {'ms/step':>8} {'share':>6} {'calls/step':>10}"]
    for e in events[:rows]:
        ms = e.self_cpu_time_total / iters / 1000
        lines.append(f"  {e.key[:58]:<58} {ms:>8.1f} {ms / total:>6.1%} {e.count / iters:>10.0f}")
    return "\n".join(lines)


def time_train_adm_fp16(model, x, t, y, device, iters):
    """ADM's fp16 training step (``fp16_util.MixedPrecisionTrainer``): fp16 torso, fp32 master copy,
    loss scaled by 2^lg, grads copied to the masters and checked for overflow (a host sync), AdamW
    on the masters, weights copied back."""
    model.convert_to_fp16()
    params = list(model.parameters())
    master = [p.detach().float().clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(master, lr=1e-4)
    target = torch.randn_like(x)
    kwargs = {"y": y} if y is not None else {}
    lg_scale = 20.0

    def step():
        out = model(x, t, **kwargs)
        loss = ((out.float() - target) ** 2).mean()
        for p in params:
            p.grad = None
        (loss * 2**lg_scale).backward()
        for m, p in zip(master, params):
            m.grad = p.grad.float() / 2**lg_scale
        norm = sum(float(m.grad.norm() ** 2) for m in master)  # ADM: per-parameter .item()s
        if norm == norm and norm != float("inf"):
            opt.step()
            with torch.no_grad():
                for m, p in zip(master, params):
                    p.copy_(m)

    return images_per_second(step, x.shape[0], device, iters)


def time_ddim(model, diffusion, x, y, device, precision, steps):
    kwargs = {"y": y} if y is not None else {}
    model.eval()
    indices = list(range(diffusion.num_timesteps))[::-1][:steps]
    precision = FP32 if precision == "adm_fp16" else precision  # ADM's fp16 casts in the model

    def net(x_t, ts, **kw):  # as sampling_sets.sample_batch calls the network
        with precision.autocast(device):
            out = model(precision.input(x_t), ts, **kw)
        return precision.output(out)

    with torch.inference_mode():
        img = x.clone()
        diffusion.ddim_sample(net, img, torch.full((x.shape[0],), indices[0], device=device), model_kwargs=kwargs)
        sync(device)
        t0 = time.perf_counter()
        for i in indices:
            out = diffusion.ddim_sample(net, img, torch.full((x.shape[0],), i, device=device), model_kwargs=kwargs)
            img = out["sample"]
        sync(device)
    model.train()
    per_step = (time.perf_counter() - t0) / len(indices)
    return x.shape[0] / (50 * per_step)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["mnist_demo", "mnist", "small", "adm_cifar10"], choices=list(CONFIGS),
                   help="models to time (default: all)")
    p.add_argument("--batch", type=int, default=32, help="training and sampling batch (default 32)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations after a warm-up; the median (default 5)")
    p.add_argument("--ddim-steps", type=int, default=5, help="DDIM steps timed (reported as DDIM-50 img/s)")
    p.add_argument("--precision", nargs="+", default=["fp32", "auto"], choices=["auto", "fp32", "bf16", "fp16"],
                   help="our paths' train.precision values (default: fp32 and auto, as auto resolves on this device)")
    p.add_argument("--memory-format", nargs="+", default=["auto"], choices=["auto", "contiguous", "channels_last"],
                   help="our paths' train.memory_format values (default: auto)")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the straightforward ADM path (einsum attention, fp32)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for the MFU (CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--compile", action="store_true", help="also time ours under torch.compile (train.compile: inductor)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="also profile our paths' training step: the ROWS operators with the most self time")
    args = p.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads, CPU {describe_cpu()}"
    peaks = matmul_peaks(device)
    print(f"device {device} ({where}), torch {torch.__version__}, batch {args.batch}, median of {args.iters}; "
          f"1024^2 matmul: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s")
    header = (f"{'config':<12} {'path':<30} {'params':>8} {'GFLOP/img':>9} {'train img/s':>11} {'GFLOP/s':>8} "
              f"{'DDIM-50 img/s':>13} {'peak MB':>8}")
    if device.type == "cuda":
        header += f" {'MFU':>6}"
    print(header)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim50")
    ours = {}  # label -> Precision, one per distinct resolved choice
    for prec in args.precision:
        for fmt in args.memory_format:
            r = resolve(prec, fmt, device)
            label = f"ours {prec}" + (f" {fmt}" if len(args.memory_format) > 1 else "")
            if r not in ours.values():
                ours[f"{label} ({r.name}{', channels_last' if r.channels_last else ''})" if prec == "auto" else label] = r
    records = []
    for name in args.configs:
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        x = torch.randn(args.batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"], device=device)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        y = torch.randint(0, cfg.get("num_classes", 10), (args.batch,), device=device) if cfg.get("class_cond") else None
        paths = [(label, "sdpa", r) for label, r in ours.items()]
        if args.compile:
            paths += [(f"{label} compiled", "sdpa", r) for label, r in ours.items()]
        if args.reference:
            paths.insert(0, ("reference fp32", "einsum", FP32))
            if device.type == "cuda":
                paths.insert(1, ("ADM fp16", "einsum", "adm_fp16"))
        results = {}
        for label, backend, precision in paths:
            torch.manual_seed(0)
            model = build(name, backend).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            n_params = sum(p.numel() for p in model.parameters())
            flops = forward_flops(model, x[:1], t[:1], None if y is None else y[:1])
            if label.endswith("compiled"):
                model = torch.compile(model)  # its first (timed-out) warm-up step compiles
            train = time_train(model, x, t, y, device, precision, args.iters)
            ddim = time_ddim(model, diffusion, x[: min(16, args.batch)], None if y is None else y[:16], device,
                             precision, args.ddim_steps)
            mem = peak_memory_mb(device)
            results[label] = (train, ddim)
            gflops = 3 * flops * train / 1e9
            records.append({"config": name, "path": label, "params_m": n_params / 1e6, "gflop_per_img": flops / 1e9,
                            "train_img_s": train, "train_gflop_s": gflops, "ddim50_img_s": ddim, "peak_mb": mem,
                            "precision": precision if isinstance(precision, str) else precision.describe(),
                            "mfu": 3 * flops * train / (args.peak_tflops * 1e12) if device.type == "cuda" else None})
            line = (f"{name:<12} {label:<30} {n_params / 1e6:>7.2f}M {flops / 1e9:>9.3f} {train:>11.1f} {gflops:>8.0f} "
                    f"{ddim:>13.2f} {mem:>8.0f}")
            if device.type == "cuda":
                line += f" {3 * flops * train / (args.peak_tflops * 1e12):>6.1%}"
            print(line, flush=True)
            if args.profile and label.startswith("ours") and not label.endswith("compiled"):
                torch.manual_seed(0)
                print(profile_train(build(name, backend).to(device), x, t, y, device, precision, args.iters,
                                    args.profile), flush=True)
            del model
        for ref in ("reference fp32", "ADM fp16"):
            if ref in results:
                for label, v in results.items():
                    if label not in ("reference fp32", "ADM fp16"):
                        print(f"{name:<12} {label:<30} over {ref}: training {v[0] / results[ref][0]:.2f}x, "
                              f"DDIM {v[1] / results[ref][1]:.2f}x")

    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": str(device), "where": where, "torch": torch.__version__, "batch": args.batch,
                       "matmul_gflop_s": peaks, "rows": records}, f, indent=1)


if __name__ == "__main__":
    main()
