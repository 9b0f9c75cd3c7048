"""The fidelity benchmark's planning, tables and claims (the runs themselves are the scripts')."""

import csv
import os

import pytest
import yaml

from guided_diffusion import benchmark_cl as bcl
from guided_diffusion.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "yaml/bench/split_mnist.yaml")


def _suite(tmp_path, **changes):
    with open(SUITE) as f:
        raw = yaml.safe_load(f)
    raw.update(out_dir=str(tmp_path / "runs"), report_dir=str(tmp_path / "report"), **changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_plan_writes_valid_configs_sharing_the_first_task(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401  (method schemas)
    import guided_diffusion.evaluation.settings  # noqa: F401

    suite = bcl.load_suite(_suite(tmp_path, seeds=[0, 1]))
    specs = bcl.plan(suite)
    cont = [s for s in specs if s.kind == "continual"]
    assert len(cont) == 2 * len(suite.methods)
    for seed in (0, 1):
        runs = [s for s in cont if s.seed == seed]
        cfgs = [load_config(s.config_path) for s in runs]
        assert all(c.seed == seed and c.name == f"{s.label}_s{seed}" for c, s in zip(cfgs, runs))
        # the first method trains task 0, every other takes it from there
        assert cfgs[0].continual.init_from == ""
        assert all(c.continual.init_from == runs[0].run_dir for c in cfgs[1:])
        # identical settings apart from the method: same model, steps and evaluation everywhere
        assert len({(c.continual.num_steps, c.model.num_channels, c.evaluation.num_samples) for c in cfgs}) == 1
        assert [c.method.name for c in cfgs[:2]] == ["naive", "joint"]
    solver = [s for s in specs if s.kind == "solver"]
    assert [s.label for s in solver if s.seed == 0] == [f"solver_{r}" for r in suite.solver["replays"]]
    assert all(s.run_dir.endswith(f"gd_full_s{s.seed}/{s.label}") for s in solver)


def test_bad_suites_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown suite key"):
        bcl.load_suite(_suite(tmp_path, sedes=[0]))
    with pytest.raises(ConfigError, match="solver.diffusion 'nope'"):
        bcl.load_suite(_suite(tmp_path, solver={"diffusion": "nope"}))
    with pytest.raises(ConfigError, match="no scale 'huge'"):
        bcl.load_suite(_suite(tmp_path), scale="huge")
    suite = bcl.load_suite(_suite(tmp_path, solver={},
                                  methods={"naive": {"name": "naive"}, "bad": {"name": "ewc", "lamda": 1}}))
    with pytest.raises(ConfigError, match="method bad"):
        bcl.plan(suite)
    assert not os.path.exists(tmp_path / "runs" / "naive_s0")  # nothing ran


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_tables_and_claims_from_run_logs(tmp_path):
    suite = bcl.load_suite(_suite(tmp_path, seeds=[0, 1]))
    specs = [s for s in bcl.plan(suite)]
    fid = {"gd_full": (10.0, 12.0), "gr_masip": (30.0, 34.0), "joint": (5.0, 5.0), "gd_dynamic_cache": (10.5, 12.5)}
    for s in specs:
        if s.kind == "continual" and s.label in fid:
            f = fid[s.label][s.seed]
            _write(f"{s.run_dir}/metrics.csv", [
                {"task": 0, "sec_per_step": 1.0, "eval_fid": 3.0, "eval_kld": 0.01, "final_teacher_nfe": ""},
                {"task": 1, "sec_per_step": 2.0 if s.label != "gd_dynamic_cache" else 1.2, "eval_fid": f,
                 "eval_kld": f / 100, "final_teacher_nfe": 48 if s.label == "gd_full" else 16},
            ])
        if s.kind == "solver" and s.label in ("solver_plain", "solver_guided"):
            _write(f"{s.run_dir}/metrics.csv", [{"task": 1, "avg_acc": 0.80 if s.label == "solver_plain" else 0.85,
                                                 "forgetting": 0.1, "gen_sec": 3}])
    header, rows, means = bcl.method_table(suite, specs)
    row = dict(zip(header, rows[[r[0] for r in rows].index("gd_full")]))
    assert row["seeds"] == "2/2" and row["FID ↓"].startswith("11 ± 1.4")  # mean 11, sample std sqrt(2)
    assert means["gd_full"]["sps"] == 2.0  # tasks 1+ only
    assert means["gd_full"]["nfe"] == 48
    _, srows, smeans = bcl.solver_table(suite, specs)
    assert smeans["guided"]["acc"] == pytest.approx(0.85) and smeans["none"]["acc"] is None
    text = "\n".join(bcl.claims(means, smeans))
    assert text.count("**confirmed**") == 3, text
    means["gd_full"]["eval_fid"] = 40.0  # worse than generative replay: the claim is not confirmed
    assert bcl.claims(means, smeans)[0].endswith("**not confirmed** (GD better on both FID and KLD).")
