"""The device check's CPU-runnable parts: scripts/gpu_check.sh end to end in its quick mode, its
summary's parsing and goal checks, and the benchmark's ADM-fp16 reference step."""

import importlib.util
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_quick_writes_the_summary(tmp_path):
    p = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path), "--quick", "--pytest-args",
                        "-k unet_forward"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    text = (tmp_path / "summary.md").read_text()
    assert "# Device check" in text and "- commit: " in text
    assert "1 passed" in text  # the selected gpu test ran (on the CPU here: GD_TEST_DEVICE=cpu)
    assert "| mnist_demo | reference fp32 |" in text and "| mnist_demo | ours fp32 |" in text
    # the faster of ours; auto names its precision and, where it changes it, the layout ("auto (bf16, channels_last)")
    assert re.search(r"- mnist_demo: ours (fp32|auto \([\w, ]+\)) over reference fp32: training", text)
    for f in ("tests.txt", "benchmark.txt", "benchmark.json"):
        assert (tmp_path / f).is_file()


def test_summary_parsing_and_goals():
    gc = _script("gpu_check")
    log = "....F.\nFAILED tests/test_gpu.py::test_x - AssertionError\n===== 5 passed, 1 failed in 30.1s =====\n"
    assert gc.test_summary(log) == "5 passed, 1 failed in 30.1s\n  - tests/test_gpu.py::test_x"
    row = dict(config="c", params_m=1.0, gflop_per_img=1.0, peak_mb=1.0)
    data = {"rows": [dict(row, path="reference fp32", train_img_s=100.0, ddim50_img_s=10.0, mfu=0.1),
                     dict(row, path="ADM fp16", train_img_s=200.0, ddim50_img_s=20.0, mfu=0.2),
                     dict(row, path="ours bf16", train_img_s=500.0, ddim50_img_s=30.0, mfu=0.45)]}
    assert gc.goals(data) == "- c: ours bf16 over ADM fp16: training 2.50x (met), DDIM 1.50x (not met), MFU 45.0% (met)"
    assert "| c | ours bf16 | 1.00M | 1.00 | 500.0 | 30.0 | 1 | 45.0% |" in gc.benchmark_table(data)


def test_adm_fp16_reference_step_updates_fp32_masters():
    """ADM's mixed-precision step: the torso in fp16, the update on fp32 masters copied back."""
    bench = _script("benchmark")
    torch.manual_seed(0)
    model = bench.build("mnist_demo", "einsum")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([5, 500]), torch.tensor([1, 2])
    rate = bench.time_train_adm_fp16(model, x, t, y, torch.device("cpu"), iters=1)
    assert rate > 0 and model.dtype == torch.float16
    after = model.state_dict()
    assert after["input_blocks.1.0.in_layers.2.weight"].dtype == torch.float16  # the torso, cast as ADM
    assert after["out.2.weight"].dtype == torch.float32  # ADM keeps the output layer in fp32
    assert any(not torch.equal(before[k].to(after[k].dtype), after[k]) for k in after)  # the step moved weights
