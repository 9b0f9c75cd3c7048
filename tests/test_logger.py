"""logger: CSV/JSONL contents, keys that appear later, means, rank 0 alone writing, optional sinks."""

import csv
import io
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from guided_diffusion.runtime import logger as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_csv_jsonl_and_means(tmp_path, capsys):
    log = L.Logger(str(tmp_path), rank=0)
    log.logkv("lr", 1e-4)
    log.logkv_mean("loss", 1.0)
    log.logkv_mean("loss", torch.tensor(3.0))  # tensors become numbers
    row = log.dumpkvs(step=10)
    assert row == {"step": 10, "lr": 1e-4, "loss": 2.0}

    log.logkv_mean("loss", 5.0)
    log.logkv("grad_norm", 0.5)  # a key that appears later
    assert log.dumpkvs(step=20) == {"step": 20, "loss": 5.0, "grad_norm": 0.5}
    log.log("hello", 3)
    log.close()

    rows = _csv(tmp_path / "progress.csv")
    assert list(rows[0]) == ["step", "lr", "loss", "grad_norm"]
    assert rows[0] == {"step": "10", "lr": "0.0001", "loss": "2.0", "grad_norm": ""}
    assert rows[1] == {"step": "20", "lr": "", "loss": "5.0", "grad_norm": "0.5"}
    assert _jsonl(tmp_path / "progress.jsonl") == [
        {"step": 10, "lr": 1e-4, "loss": 2.0},
        {"step": 20, "loss": 5.0, "grad_norm": 0.5},
    ]
    text = (tmp_path / "log.txt").read_text()
    assert "hello 3" in text and "| loss" in text
    out = capsys.readouterr().out
    assert "hello 3" in out and "| grad_norm | 0.5" in out


def test_step_logged_explicitly_and_no_step(tmp_path):
    with L.Logger(str(tmp_path), rank=0, formats=("csv",)) as log:
        log.logkv("step", 7)
        assert log.dumpkvs(step=99) == {"step": 7}  # an explicit value wins
        log.logkv("x", 1)
        assert log.dumpkvs() == {"x": 1}
    rows = _csv(tmp_path / "progress.csv")
    assert rows == [{"step": "7", "x": ""}, {"step": "", "x": "1"}]
    assert not (tmp_path / "progress.jsonl").exists()


def test_resumed_logger_continues_the_files(tmp_path):
    with L.Logger(str(tmp_path), rank=0, formats=("csv", "jsonl")) as log:
        log.logkv("a", 1)
        log.dumpkvs(1)
    with L.Logger(str(tmp_path), rank=0, formats=("csv", "jsonl")) as log:
        log.logkv("a", 2)
        log.dumpkvs(2)
        log.logkv("b", 3)
        log.dumpkvs(3)
    assert _csv(tmp_path / "progress.csv") == [
        {"step": "1", "a": "1", "b": ""}, {"step": "2", "a": "2", "b": ""}, {"step": "3", "a": "", "b": "3"},
    ]
    assert [r["step"] for r in _jsonl(tmp_path / "progress.jsonl")] == [1, 2, 3]


def test_other_ranks_write_nothing(tmp_path, capsys):
    d = tmp_path / "run"
    log = L.Logger(str(d), rank=1)
    log.logkv_mean("loss", 4.0)
    log.logkv("x", 1)
    assert log.dumpkvs(5) == {"step": 5, "x": 1, "loss": 4.0}  # no process group: no reduction
    log.log("not shown")
    log.close()
    assert not d.exists()
    assert capsys.readouterr().out == ""


def test_bad_format_and_module_api(tmp_path, capsys):
    with pytest.raises(ValueError, match="tensorbored"):
        L.Logger(str(tmp_path), rank=0, formats=("csv", "tensorbored"))
    lg = L.configure(str(tmp_path), rank=0, formats=("stdout", "jsonl"))
    assert L.get_logger() is lg
    L.logkv("a", 1)
    L.logkv_mean("m", 2.0)
    L.logkv_mean("m", 4.0)
    assert L.dumpkvs(0) == {"step": 0, "a": 1, "m": 3.0}
    L.log("message")
    L.configure(None, rank=0, formats=("stdout",))  # closes the previous one
    assert _jsonl(tmp_path / "progress.jsonl") == [{"step": 0, "a": 1, "m": 3.0}]
    assert "message" in capsys.readouterr().out


def test_progress_bar(monkeypatch):
    monkeypatch.delenv("GD_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal -> off
    assert L.progress_bar(range(3), rank=0).disable
    monkeypatch.setenv("GD_PROGRESS", "1")
    bar = L.progress_bar(total=3, rank=0, desc="x", initial=1)
    assert not bar.disable and bar.n == 1
    bar.close()
    assert L.progress_bar(total=3, rank=1).disable  # never on other ranks
    assert list(L.progress_bar(range(3), rank=1)) == [0, 1, 2]
    monkeypatch.setenv("GD_PROGRESS", "0")
    assert L.progress_bar(total=3, rank=0).disable
    assert not L.progress_bar(total=3, rank=0, disable=False).disable  # explicit wins on rank 0
    lg = L.Logger(None, rank=0, formats=())
    assert lg.progress_bar(total=2, desc="t").disable


def test_optional_sinks_are_lazy_and_fail_clearly(tmp_path, monkeypatch):
    code = ("import sys, guided_diffusion.runtime.logger as L; L.Logger(sys.argv[1], rank=0).close(); "
            "print('wandb' in sys.modules, 'torch.utils.tensorboard' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lazy")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        L.Logger(str(tmp_path), rank=0, wandb=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        L.Logger(str(tmp_path), rank=0, tensorboard=True)


def test_wandb_sink_with_a_stand_in_module(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step=None):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with L.Logger(str(tmp_path), rank=0, formats=(), wandb={"project": "p", "mode": "offline"}) as log:
        log.logkv("loss", 0.5)
        log.logkv("name", "text is not logged to wandb")
        log.dumpkvs(3)
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert len(run_id) == 12
    assert calls == [
        ("init", {"project": "p", "mode": "offline", "dir": str(tmp_path), "id": run_id, "resume": "allow"}),
        ("log", {"step": 3, "loss": 0.5}, None),  # wandb's own step (one axis over tasks); the trainer's as a value
        ("finish",),
    ]
    # a restart (preemption) in the same run folder continues the same W&B run
    calls.clear()
    L.Logger(str(tmp_path), rank=0, formats=(), wandb="p").close()
    assert calls[0] == ("init", {"project": "p", "dir": str(tmp_path), "id": run_id, "resume": "allow"})
    # other ranks never start a wandb run
    calls.clear()
    L.Logger(str(tmp_path), rank=1, wandb=True).close()
    assert calls == []


CHILD = r'''
import json, sys
from guided_diffusion.runtime import dist_util as du, logger as L
du.init(timeout_s=60)
r = du.get_rank()
log = L.Logger(sys.argv[1], formats=("csv", "jsonl"))
for v in ([1.0, 3.0] if r == 0 else [8.0]):  # rank 0 logs twice, rank 1 once
    log.logkv_mean("loss", v)
log.logkv_mean("only_rank%d" % r, 10.0 * (r + 1))
log.logkv("who", r)
row = log.dumpkvs(1)
log.close()
sys.stdout.write("RESULT " + json.dumps(dict(rank=r, row=row)) + "\n")
sys.stdout.flush()
du.cleanup()
'''


def test_two_ranks_reduce_means_and_rank0_writes(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(run_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = {}
    for line in proc.stdout.splitlines():
        if "RESULT " in line:
            d = json.loads(line.split("RESULT ", 1)[1])
            rows[d["rank"]] = d["row"]
    assert sorted(rows) == [0, 1]
    for r, row in rows.items():
        assert row["loss"] == pytest.approx(4.0)  # (1 + 3 + 8) / 3: count-weighted over ranks
        assert row["only_rank0"] == 10.0 and row["only_rank1"] == 20.0  # keys seen on one rank only
        assert row["who"] == r
    assert _jsonl(run_dir / "progress.jsonl") == [rows[0]]  # rank 0's row, written once
    assert sorted(os.listdir(run_dir)) == ["progress.csv", "progress.jsonl"]
