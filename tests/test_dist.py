"""dist_util: launcher detection, the single-process path, and real 2-process gloo runs.

The multi-process tests start a tiny script under torchrun, mpiexec, and a faked ``srun``
environment; each rank prints one ``RESULT {json}`` line that the test checks.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from guided_diffusion.runtime import dist_util as du
from guided_diffusion.runtime.seeding import seed_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
)
LAUNCH_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "MV2_", "MPI_LOCAL", "HYDRA_")


def _is_launch_var(k):
    return k in LAUNCH_VARS or k.startswith(LAUNCH_PREFIXES)


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables; dist_util reset before and after."""
    for k in list(os.environ):
        if _is_launch_var(k):
            monkeypatch.delenv(k)
    du.cleanup()
    yield monkeypatch
    du.cleanup()


def _child_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not _is_launch_var(k)}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------- pure parts


def test_expand_nodelist():
    assert du.expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert du.expand_nodelist("gpu5") == ["gpu5"]
    assert du.expand_nodelist("a[1-2],b,c[09-10]") == ["a1", "a2", "b", "c09", "c10"]
    assert du.expand_nodelist("rack[1-2]-n[1-2]") == ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    with pytest.raises(ValueError, match="unbalanced"):
        du.expand_nodelist("node[01-03")


def test_detect_torchrun():
    env = dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="29500")
    assert du.detect(env) == du.Launch("torchrun", 3, 4, 1, "h", 29500)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        du.detect(dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))
    with pytest.raises(RuntimeError, match="LOCAL_RANK"):
        du.detect(dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="1"))


def test_detect_slurm():
    env = dict(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_STEP_NUM_TASKS="8", SLURM_STEP_ID="0",
               SLURM_LOCALID="1", SLURM_JOB_NODELIST="gpu[07-10]", SLURM_JOB_ID="123456")
    assert du.detect(env) == du.Launch("slurm", 5, 8, 1, "gpu07", 15000 + 123456 % 20000)
    assert du.detect({**env, "MASTER_PORT": "4242", "MASTER_ADDR": "x"}).master_port == 4242
    assert du.detect({**env, "SLURM_STEP_NODELIST": "gpu[09-10]"}).master_addr == "gpu09"
    # torchrun inside an allocation wins over SLURM
    assert du.detect({**env, "RANK": "0", "WORLD_SIZE": "1"}).kind == "torchrun"


def test_detect_slurm_batch_step_without_srun_is_one_process():
    env = dict(SLURM_PROCID="0", SLURM_NTASKS="4", SLURM_LOCALID="0", SLURM_JOB_NODELIST="n[1-2]")
    with pytest.warns(UserWarning, match="srun"):
        assert du.detect(env).kind == "none"


def test_detect_mpi():
    assert du.detect(dict(PMI_RANK="1", PMI_SIZE="2", MPI_LOCALRANKID="1")) == du.Launch("mpi", 1, 2, 1)
    assert du.detect(dict(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="4",
                          OMPI_COMM_WORLD_LOCAL_RANK="0")) == du.Launch("mpi", 2, 4, 0)
    # no local-rank variable: left to the host-name split in init()
    assert du.detect(dict(PMI_RANK="0", PMI_SIZE="2")).local_rank is None
    # mpiexec inside a SLURM batch step: SLURM_PROCID is the batch step's 0 for every process
    env = dict(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_JOB_NODELIST="n1", PMI_RANK="1", PMI_SIZE="2")
    assert du.detect(env).kind == "mpi"
    assert du.detect({}).kind == "none"


# ---------------------------------------------------------------------------------------- one process


def test_single_process(clean_env, tmp_path):
    d = du.init(timeout_s=5)
    assert d == torch.device("cuda", 0) if torch.cuda.is_available() else d == torch.device("cpu")
    assert du.init() is d  # idempotent
    assert (du.get_rank(), du.get_world_size(), du.get_local_rank()) == (0, 1, 0)
    assert du.is_main() and not du.is_initialized() and du.launcher() == "none"
    du.barrier()
    assert du.broadcast_object({"a": 1}) == {"a": 1}
    assert du.all_gather_object(7) == [7]
    x = torch.tensor([1, 2, 3])
    m = du.all_reduce_mean(x)
    assert m.is_floating_point() and torch.equal(m, x.double()) and x.dtype == torch.long
    assert torch.equal(du.all_gather_tensor(torch.ones(2, 3)), torch.ones(2, 3))
    assert du.all_gather_tensor(torch.tensor(5.0)).shape == (1,)
    net = torch.nn.Linear(2, 2)
    before = [p.clone() for p in net.parameters()]
    du.sync_params(net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with du.main_first():
        (tmp_path / "f").write_text("x")
    assert du.rank0_first is du.main_first


def test_mpi_env_without_mpi4py_is_a_clear_error(clean_env):
    clean_env.setenv("PMI_RANK", "0")
    clean_env.setenv("PMI_SIZE", "2")
    clean_env.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="mpi4py"):
        du.init()
    assert not du.is_initialized() and du.get_world_size() == 1


def test_mpi_world_of_one_needs_no_mpi4py(clean_env):
    clean_env.setenv("PMI_RANK", "0")
    clean_env.setenv("PMI_SIZE", "1")
    clean_env.setitem(sys.modules, "mpi4py", None)
    du.init()
    assert du.launcher() == "mpi" and du.get_world_size() == 1 and not du.is_initialized()


class _NotWeights:
    pass


def test_load_state_dict(tmp_path):
    path = str(tmp_path / "w.pt")
    sd = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(3)}
    torch.save(sd, path)
    out = du.load_state_dict(path)
    assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)

    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        du.load_state_dict(missing)

    bad = tmp_path / "bad.pt"
    bad.write_bytes(open(path, "rb").read()[:40])
    with pytest.raises(RuntimeError, match="bad.pt"):
        du.load_state_dict(str(bad))

    pickled = str(tmp_path / "obj.pt")
    torch.save({"x": _NotWeights()}, pickled)
    with pytest.raises(RuntimeError, match="obj.pt"):  # weights_only refuses arbitrary objects
        du.load_state_dict(pickled)


def test_seed_all():
    assert seed_all(3, 0) == 3
    a = torch.rand(3)
    seed_all(3, 0)
    assert torch.equal(a, torch.rand(3))
    s1, s2 = seed_all(3, 1), seed_all(3, 2)
    assert len({3, s1, s2, seed_all(4, 1)}) == 4


# ---------------------------------------------------------------------------------------- 2 processes

CHILD = r'''
import json, os, sys, torch
if "--drop-local" in sys.argv:  # make init() derive the local rank from host names
    for k in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        os.environ.pop(k, None)
from guided_diffusion.runtime import dist_util as du

shared = sys.argv[1]
dev = du.init(timeout_s=60)
assert du.init() == dev
r, w = du.get_rank(), du.get_world_size()
res = dict(rank=r, world=w, local=du.get_local_rank(), kind=du.launcher(), group=du.is_initialized(),
           device=str(dev), backend=du.backend())
res["mean"] = du.all_reduce_mean(torch.tensor([r + 1.0, 10.0 * r])).tolist()
res["bcast"] = du.broadcast_object({"from": r, "list": [r] * 3})
res["objs"] = du.all_gather_object(f"r{r}")
res["gather"] = du.all_gather_tensor(torch.full((r + 1, 2), float(r))).tolist()
res["gather_int"] = du.all_gather_tensor(torch.arange(2 - r)).tolist()  # rank 1 contributes 1 item

torch.manual_seed(100 + r)  # different weights per rank
net = torch.nn.Linear(3, 3)
rank0_sum = du.broadcast_object(sum(p.sum().item() for p in net.parameters()))
du.sync_params(list(net.parameters()) + list(net.buffers()))
sums = du.all_gather_object(sum(p.sum().item() for p in net.parameters()))
res["synced"] = all(abs(s - rank0_sum) < 1e-6 for s in sums)

path = os.path.join(shared, "ckpt.pt")
with du.main_first():
    if du.is_main():
        torch.save({"w": torch.full((2,), 7.0)}, path)
    res["loaded"] = du.load_state_dict(path)["w"].tolist()  # every rank reads it itself
du.barrier()
sys.stdout.write("RESULT " + json.dumps(res) + "\n")
sys.stdout.flush()
du.cleanup()
'''


def _results(proc):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]
    assert sorted(r["rank"] for r in rows) == [0, 1], out[-4000:]
    return sorted(rows, key=lambda r: r["rank"])


def _check(rows, kind):
    for r in rows:
        assert r["world"] == 2 and r["kind"] == kind and r["group"] and r["backend"] == "gloo"
        assert r["local"] == r["rank"]  # one host
        assert r["device"] == "cpu"
        assert r["mean"] == [1.5, 5.0]
        assert r["bcast"] == {"from": 0, "list": [0, 0, 0]}
        assert r["objs"] == ["r0", "r1"]
        assert r["gather"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert r["gather_int"] == [0, 1, 0]
        assert r["synced"] is True
        assert r["loaded"] == [7.0, 7.0]


def _script(tmp_path, text=CHILD):
    p = tmp_path / "child.py"
    p.write_text(text)
    return str(p)


def test_torchrun_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           _script(tmp_path), str(tmp_path)]
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=120)
    _check(_results(proc), "torchrun")


def _mpiexec():
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec is not on PATH (install the optional extra: pip install guided-diffusion-cl[mpi])")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (optional extra: pip install guided-diffusion-cl[mpi])")
    cmd = [exe]
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


@pytest.mark.parametrize("drop_local", [False, True], ids=["env-local-rank", "hostname-split"])
def test_mpiexec_two_processes(tmp_path, drop_local):
    cmd = _mpiexec() + ["-n", "2", sys.executable, _script(tmp_path), str(tmp_path)]
    if drop_local:
        cmd.append("--drop-local")
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=120)
    _check(_results(proc), "mpi")


def test_slurm_two_processes(tmp_path):
    """Two processes with the variables srun gives its tasks (no Slurm needed)."""
    script = _script(tmp_path)
    common = dict(SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_ID="0", SLURM_JOB_ID="4242",
                  SLURM_JOB_NODELIST="localhost", SLURM_STEP_NODELIST="localhost",
                  MASTER_PORT=str(_free_port()))
    procs = [
        subprocess.Popen([sys.executable, script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_child_env({**common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}))
        for r in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    merged = subprocess.CompletedProcess(
        None, max(o.returncode for o in outs), "".join(o.stdout for o in outs), "".join(o.stderr for o in outs)
    )
    _check(_results(merged), "slurm")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A dead or hung rank: tests/test_reliability_ranks.py
