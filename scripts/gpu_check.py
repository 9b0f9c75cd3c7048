"""The one-command device check: the `gpu` tests, the speed benchmark, a summary.

Usage (on a machine with a GPU; within about 8 minutes on one H100/H200):
    scripts/gpu_check.sh [OUT_DIR]                 # = python scripts/gpu_check.py --out OUT_DIR
    python scripts/gpu_check.py --out D --quick    # small settings: how it is tested on a CPU

It runs, each with its own time limit, and goes on when one part fails:
1. ``pytest -m gpu`` (tests/test_gpu.py: CUDA vs CPU forward, bf16/fp16 continual runs, classifier
   guidance through ADM's loop and the solvers, the DKDM cache on device, resume bit-identity);
   without CUDA they run on the CPU (``GD_TEST_DEVICE=cpu``), which checks the code paths only;
2. ``scripts/benchmark.py`` at the mnist demo and ADM's CIFAR-10 config: ADM's fp16 path, the
   fp32 reference and ours (bf16 autocast, SDPA, fused AdamW) side by side: img/s, peak memory, MFU;
and writes ``OUT/summary.md`` (date, machine, commit, the tables, the goals met or not) beside the
raw outputs (``tests.txt``, ``benchmark.txt``, ``benchmark.json``). Paste the summary into
docs/performance.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = "training ≥ 2x ADM's fp16 path at equal batch, ≥ 40% MFU; DDIM sampling ≥ 2x ADM's"


def _run(cmd, log_path, timeout, env=None):
    """Run ``cmd`` from the repository root, output to ``log_path``: (exit code, seconds)."""
    t0 = time.time()
    with open(log_path, "w") as log:
        try:
            code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        except subprocess.TimeoutExpired:
            log.write(f"\n[gpu_check] stopped after its {timeout} s limit\n")
            code = 124
    return code, time.time() - t0


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return (out.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def test_summary(log_text: str) -> str:
    """pytest's final line ("5 passed, 1 failed in 30.1s") and the failed tests' names."""
    final = [line.strip("= ") for line in log_text.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", line)
             and " in " in line]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", log_text, flags=re.M)
    out = final[-1] if final else "no pytest summary line (see tests.txt)"
    return out + ("".join(f"\n  - {f}" for f in failed) if failed else "")


def benchmark_table(data: dict) -> str:
    rows = data.get("rows", [])
    lines = ["| config | path | params | GFLOP/img | train img/s | DDIM-50 img/s | peak MB | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['config']} | {r['path']} | {r['params_m']:.2f}M | {r['gflop_per_img']:.2f} | "
                     f"{r['train_img_s']:.1f} | {r['ddim50_img_s']:.1f} | {r['peak_mb']:.0f} | {mfu} |")
    return "\n".join(lines)


def goals(data: dict) -> str:
    """Our best path against ADM's fp16 (else the fp32 reference) per config, and the MFU goal."""
    lines = []
    by_cfg = {}
    for r in data.get("rows", []):
        by_cfg.setdefault(r["config"], []).append(r)
    for cfg, rows in by_cfg.items():
        ref = next((r for r in rows if r["path"] == "ADM fp16"), None) or next(
            (r for r in rows if r["path"] == "reference fp32"), None)
        ours = [r for r in rows if r["path"].startswith("ours")]
        if ref is None or not ours:
            continue
        best = max(ours, key=lambda r: r["train_img_s"])
        tr, dd = best["train_img_s"] / ref["train_img_s"], best["ddim50_img_s"] / ref["ddim50_img_s"]
        line = (f"- {cfg}: {best['path']} over {ref['path']}: training {tr:.2f}x ({'met' if tr >= 2 else 'not met'}), "
                f"DDIM {dd:.2f}x ({'met' if dd >= 2 else 'not met'})")
        if best.get("mfu") is not None:
            line += f", MFU {best['mfu']:.1%} ({'met' if best['mfu'] >= 0.4 else 'not met'})"
        lines.append(line)
    return "\n".join(lines) or "- no comparison (see benchmark.txt)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "experiments", "gpu_check"))
    p.add_argument("--quick", action="store_true", help="small settings (a CPU check of this script)")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k unet_forward\"")
    args = p.parse_args()
    import torch

    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = {} if cuda else {"GD_TEST_DEVICE": "cpu"}
    tests_cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py",
                 *args.pytest_args.split()]
    code_t, sec_t = _run(tests_cmd, os.path.join(args.out, "tests.txt"), 90 if args.quick else 240, env)
    bench_json = os.path.join(args.out, "benchmark.json")
    if args.quick:
        bench = ["--configs", "mnist_demo", "--batch", "8", "--iters", "2", "--ddim-steps", "2"]
    else:
        bench = ["--configs", "mnist_demo", "adm_cifar10", "--batch", "128", "--iters", "10", "--ddim-steps", "10"]
        if cuda:
            bench += ["--precision", "bf16", "fp16", "--memory-format", "contiguous", "channels_last", "--compile"]
    code_b, sec_b = _run([sys.executable, "scripts/benchmark.py", *bench, "--json", bench_json],
                         os.path.join(args.out, "benchmark.txt"), 90 if args.quick else 300)
    with open(os.path.join(args.out, "tests.txt")) as f:
        tests_text = f.read()
    data = {}
    if os.path.isfile(bench_json):
        with open(bench_json) as f:
            data = json.load(f)
    summary = "\n".join([
        f"# Device check, {started}",
        "",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- command: `scripts/gpu_check.sh`{' --quick' if args.quick else ''} ({sec_t + sec_b:.0f} s)",
        "",
        f"## Tests (`pytest -m gpu`{', on the CPU: GD_TEST_DEVICE=cpu' if not cuda else ''}; exit {code_t}, "
        f"{sec_t:.0f} s)",
        "",
        test_summary(tests_text),
        "",
        f"## Speed (`scripts/benchmark.py {' '.join(bench)}`; exit {code_b}, {sec_b:.0f} s)",
        "",
        benchmark_table(data),
        "",
        f"Goals ({GOALS}):",
        "",
        goals(data),
        "",
    ])
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    return 0 if code_t == 0 and code_b == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
