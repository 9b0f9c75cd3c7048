"""The fidelity benchmark's parts (``scripts/tools/bench``): the suite file, the plan, the runs' scheduling,
the archive, the tables, the claims and the report (the runs themselves are the scripts')."""

import csv
import json
import os
import shutil

import pytest
from tools.bench import archive, repo
from tools.bench import claims as bclaims
from tools.bench import plan as bplan
from tools.bench import report as breport
from tools.bench import run as brun
from tools.bench import suite as bsuite
from tools.bench import tables

import yaml
from guided_diffusion.runtime.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "yaml/bench/split_mnist.yaml")


def _suite(tmp_path, **changes):
    with open(SUITE) as f:
        raw = yaml.safe_load(f)
    raw.update(out_dir=str(tmp_path / "runs"), report_dir=str(tmp_path / "report"))
    raw["papers"] = []  # the real papers' suites write under experiments/: tests name their own
    raw["ablations"] = []  # (test_bench_ablations.py tests these)
    raw.update(**changes)
    path = tmp_path / f"{raw.pop('file_name', 'suite')}.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_plan_writes_valid_configs_sharing_the_first_task(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401  (method schemas)
    import guided_diffusion.evaluation.settings  # noqa: F401

    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1]))
    specs = bplan.plan_runs(suite)
    cont = [s for s in specs if s.kind == "continual"]
    assert len(cont) == 2 * len(suite.methods)
    for seed in (0, 1):
        runs = [s for s in cont if s.seed == seed]
        cfgs = [load_config(s.config_path) for s in runs]
        assert all(c.seed == seed and c.name == f"{s.label}_s{seed}" for c, s in zip(cfgs, runs))
        # the first method trains task 0, every other takes it from there, but a row with its own
        # settings (another generator: the VAE baseline), which trains its own
        own = [bool(bsuite.row_settings(suite.methods[s.label])) for s in runs]
        assert cfgs[0].continual.init_from == "" and own.count(True) == 1
        assert all(c.continual.init_from == ("" if o else runs[0].run_dir) for c, o in zip(cfgs[1:], own[1:]))
        assert [s.needs for s, o in zip(runs, own) if o] == [None]
        assert [c.generator for c, o in zip(cfgs, own) if o] == ["vae"]
        # identical settings apart from the method: same model, steps and evaluation everywhere
        shared = [c for c, o in zip(cfgs, own) if not o]
        assert len({(c.continual.num_steps, c.model.num_channels, c.evaluation.num_samples) for c in shared}) == 1
        assert [c.method.name for c in cfgs[:2]] == ["naive", "joint"]
    solver = [s for s in specs if s.kind == "solver"]
    assert [s.label for s in solver if s.seed == 0] == [f"solver_{r}" for r in suite.solver["replays"]]
    assert all(s.run_dir.endswith(f"gd_full_s{s.seed}/{s.label}") for s in solver)


def test_plan_learning_curve_of_task0(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401
    import guided_diffusion.evaluation.settings  # noqa: F401

    suite = bsuite.load_suite(_suite(tmp_path, learning_curve={"classes": [0, 1], "points": "4k:16k"}))
    specs = bplan.plan_runs(suite)
    curve = [s for s in specs if s.kind == "curve"]
    assert len(curve) == 1 and curve[0].needs is None
    cmd = brun.command(curve[0])
    assert cmd[1].endswith("scripts/learning_curve.py")
    assert cmd[cmd.index("--classes") + 1] == "0,1" and cmd[cmd.index("--points") + 1] == "4k:16k"
    cfg = load_config(curve[0].config_path)  # the suite's model and evaluation, no method section
    run = load_config(next(s for s in specs if s.kind == "continual").config_path)
    assert (cfg.model, cfg.evaluation, cfg.train) == (run.model, run.evaluation, run.train) and cfg.method == {}
    with pytest.raises(ConfigError, match="unknown learning_curve key"):
        bsuite.load_suite(_suite(tmp_path, learning_curve={"clases": [0, 1]}))


def test_bad_suites_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown suite key"):
        bsuite.load_suite(_suite(tmp_path, sedes=[0]))
    with pytest.raises(ConfigError, match="solver.diffusion 'nope'"):
        bsuite.load_suite(_suite(tmp_path, solver={"diffusion": "nope"}))
    with pytest.raises(ConfigError, match="no scale 'huge'"):
        bsuite.load_suite(_suite(tmp_path), scale="huge")
    suite = bsuite.load_suite(_suite(tmp_path, solver={},
                                  methods={"naive": {"name": "naive"}, "bad": {"name": "ewc", "lamda": 1}}))
    with pytest.raises(ConfigError, match="method bad"):
        bplan.plan_runs(suite)
    assert not os.path.exists(tmp_path / "runs" / "naive_s0")  # nothing ran


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_tables_and_claims_from_run_logs(tmp_path):
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1]))
    specs = [s for s in bplan.plan_runs(suite)]
    fid = {"gd_full": (10.0, 12.0), "gr_masip": (30.0, 34.0), "gr_guide": (40.0, 44.0), "joint": (5.0, 5.0),
           "gd_dynamic_cache": (10.5, 12.5)}
    for s in specs:
        if s.kind == "continual" and s.label in fid:
            f = fid[s.label][s.seed]
            _write(f"{s.run_dir}/metrics.csv", [
                {"task": 0, "sec_per_step": 1.0, "eval_fid": 3.0, "eval_kld": 0.01, "final_teacher_nfe": "",
                 "eval_acc_task_0": 0.9, "eval_acc_task_1": "", "eval_fid_task_0": 4.0, "eval_fid_task_1": ""},
                {"task": 1, "sec_per_step": 2.0 if s.label != "gd_dynamic_cache" else 1.2, "eval_fid": f,
                 "eval_kld": f / 100, "final_teacher_nfe": 48 if s.label == "gd_full" else 16,
                 "eval_acc_task_0": 0.7, "eval_acc_task_1": 0.8, "eval_fid_task_0": 8.0, "eval_fid_task_1": 6.0},
            ])
        if s.kind == "solver" and s.label in ("solver_plain", "solver_guided", "solver_soft", "solver_joint"):
            # joint 10 points above plain: the headroom guided replay's claim needs
            acc = {"solver_plain": 0.80, "solver_guided": 0.85, "solver_soft": 0.5 + 0.01 * s.seed,
                   "solver_joint": 0.90}[s.label]
            _write(f"{s.run_dir}/metrics.csv", [
                {"task": 0, "avg_acc": 0.99, "forgetting": 0.0, "gen_sec": 0, "replay_label_agree": "",
                 "replay_old_entropy": ""},
                {"task": 1, "avg_acc": acc, "forgetting": 0.1, "gen_sec": 3, "replay_label_agree": 0.9,
                 "replay_old_entropy": 0.25}])
        if s.kind == "continual" and s.label == "naive" and s.seed == 1:  # still running: task 0 only
            _write(f"{s.run_dir}/metrics.csv", [{"task": 0, "sec_per_step": 1.0, "eval_fid": 3.0}])
        if s.kind == "solver" and s.label == "solver_none" and s.seed == 0:  # still running
            _write(f"{s.run_dir}/metrics.csv", [{"task": 0, "avg_acc": 0.99, "forgetting": 0.0, "gen_sec": 0}])
    header, rows, values = tables.method_table(suite, specs)
    assert dict(zip(header, rows[[r[0] for r in rows].index("naive")]))["seeds"] == "0/2"  # not mixed in
    row = dict(zip(header, rows[[r[0] for r in rows].index("gd_full")]))
    assert row["seeds"] == "2/2" and row["FID ↓"].startswith("11 ± 1.4")  # mean 11, sample std sqrt(2)
    assert values["gd_full"]["sps"] == [2.0, 2.0]  # tasks 1+ only
    assert values["gd_full"]["nfe"] == [48, 48] and values["gd_full"]["fid0"] == [3.0, 3.0]
    # CLoG: AIQ = (0.9 + (0.7 + 0.8) / 2) / 2, FR = 0.9 - 0.7; per-task FID AFQ (8 + 6) / 2, FR 8 - 4
    assert values["gd_full"]["aiq_acc"] == pytest.approx([0.825, 0.825])
    assert values["gd_full"]["fr_acc"] == pytest.approx([0.2, 0.2]) == values["gd_full"]["fgt"]
    assert values["gd_full"]["afq_fid"] == [7.0, 7.0] and values["gd_full"]["fr_fid"] == [4.0, 4.0]
    _, srows, svalues = tables.solver_table(suite, specs)
    assert svalues["guided"]["acc"] == pytest.approx([0.85, 0.85]) and svalues["none"]["acc"] == []
    srow = dict(zip(_, srows[[r[0] for r in srows].index("plain")]))
    assert srow["replay label = previous classifier's argmax"].startswith("0.9")  # tasks 1.. only
    assert svalues["plain"]["agree"] == pytest.approx([0.9, 0.9])
    text = "\n".join(bclaims.render_lines(suite.claims, values, svalues))
    # GD 11 +- 1.4 vs GR 32 +- 2.8: 21 apart, more than 1.4 + 2.8: confirmed (and so for the others)
    assert text.count("**confirmed**") == 3, text
    # soft 0.505 +- 0.007 vs plain 0.80: worse beyond the spread
    assert "4. *Soft-target replay" in text and text.count("**not confirmed**") == 1, text
    assert "ratio 0.60" in tables.convergence_check(values)  # task 0's FID 3 vs joint's 5
    assert "Joint training trained" not in tables.convergence_check(values)  # the logs have no floor
    floored = {**values, "joint": {**values["joint"], "floor": [2.0, 2.0]}}  # joint 5 against a floor of 2
    assert "floor 2 ± 0: ratio 2.50 (at most 1.5 asked): **no**: the later tasks' budget" in \
        tables.convergence_check(floored)
    floored["joint"]["floor"] = [4.0, 4.0]
    assert tables.convergence_check(floored).endswith("floor 4 ± 0: ratio 1.25 (at most 1.5 asked): yes.")
    values["gd_full"]["eval_fid"] = [40.0, 42.0]  # worse than generative replay beyond the spread
    assert "**not confirmed** (GD better than GR" in bclaims.render_lines(suite.claims, values, svalues)[0]
    values["gd_full"]["eval_fid"] = [20.0, 44.0]  # better on average, but within the spread (17 + 2.8)
    assert "**not resolved** (GD better than GR" in bclaims.render_lines(suite.claims, values, svalues)[0]
    one = {k: {m: v[:1] for m, v in d.items()} for k, d in values.items()}  # a single seed: no spread
    first = bclaims.render_lines(suite.claims, one, svalues)[0]
    assert first.count("**not resolved**") == 1 and "(1 seed)" in first



def _claim(**changes):
    c = {"id": "ewc_beats_naive", "statement": "EWC forgets less than fine-tuning",
         "source": "Kirkpatrick et al. 2017 (a test's claim)", "table": "generator", "row": "ewc",
         "against": "naive", "metrics": {"eval_fid": "lower"}, "rule": "better",
         "evidence": "final FID EWC {ewc.eval_fid} vs naive {naive.eval_fid} (joint {joint.eval_fid})",
         "rule_text": "EWC better than naive by more than the spread"}
    c.update(changes)
    return c


def test_a_claim_declared_in_the_suite_is_judged_in_the_report(tmp_path):
    """Claims are data: one more in the suite file (and one in another protocol) appears in the report
    with its verdict, after the suite's own, without a change to the code."""
    with open(SUITE) as f:
        claims = yaml.safe_load(f)["claims"]
    extra = [_claim(), _claim(id="joint_matches_ewc", statement="Joint training is no worse than EWC", row="joint",
                              against="ewc", rule="not_worse", protocol="toy", rule_text="",
                              evidence="joint {joint.eval_fid} vs EWC {ewc.eval_fid}")]
    toy = {"toy": {"title": "A toy protocol", "description": "Declared by a test."}}
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1], learning_curve={}, claims=claims + extra, protocols=toy))
    assert [c.id for c in suite.claims][-2:] == ["ewc_beats_naive", "joint_matches_ewc"]
    specs = bplan.plan_runs(suite)
    fid = {"naive": (400.0, 420.0), "ewc": (100.0, 110.0), "joint": (10.0, 12.0)}
    for s in specs:
        if s.kind == "continual" and s.label in fid:
            _write(f"{s.run_dir}/metrics.csv",
                   [{"task": 0, "eval_fid": 3.0}, {"task": 1, "eval_fid": fid[s.label][s.seed]}])
    path = breport.write_report(suite, specs, "python scripts/benchmark_cl.py --suite test.yaml --report-only")
    text = open(path).read()
    section = text.split("## The papers' claims, checked")[1].split("## Details")[0]
    # the suite's four claims (not measured: their rows did not run), then the two added, grouped by protocol
    assert "### This project's protocol" in section and "### A toy protocol\n\nDeclared by a test." in section
    assert section.count("**not measured**") == 4
    assert ("5. *EWC forgets less than fine-tuning* — final FID EWC 105 ± 7.1 vs naive 410 ± 14 (joint 11 ± 1.4): "
            "**confirmed** (EWC better than naive by more than the spread).") in section
    assert "6. *Joint training is no worse than EWC* — joint 11 ± 1.4 vs EWC 105 ± 7.1: **confirmed**." in section
    assert section.index("4. *Soft-target") < section.index("### A toy protocol") < section.index("6. *Joint")
    # a single protocol: no headings, the claims as a plain numbered list (the suite's own report)
    assert bclaims.render_section(suite.claims[:5], {}, {})[4].startswith("5. *EWC forgets less")


def test_claims_are_checked_when_the_suite_is_read(tmp_path):
    with open(SUITE) as f:
        claims = yaml.safe_load(f)["claims"]
    bad = [({"sedes": 1}, "unknown key"), ({"statement": ""}, "needs 'statement'"),
           ({"metrics": {"eval_fdi": "lower"}}, "metric 'eval_fdi' is not a key of the generator table"),
           ({"metrics": {"eval_fid": "smaller"}}, "direction 'smaller'"), ({"rule": "best"}, "rule 'best'"),
           ({"protocol": "masip"}, "protocol 'masip' is not declared"), ({"table": "solver"}, "table 'solver'"),
           ({"evidence": "EWC {ewc.acc}"}, "key 'acc' is not a key of the generator table"),
           ({"evidence": "EWC {ewc}"}, "expected {LABEL.KEY}"), ({"evidence": "{others.eval_fid}"}, "others are"),
           ({"rule": "equivalent"}, "needs a tolerance"), ({"tolerance": 0.1}, "belong to rule equivalent"),
           ({"against": {"best_of": ["naive", "joint"], "by": "eval_kld"}}, "against.by 'eval_kld'"),
           ({"headroom": {"metric": "eval_fid", "low": "naive"}}, "headroom is {metric, low, high, min}"),
           ({"headroom": {"metric": "eval_kld", "low": "naive", "high": "joint", "min": 1}},
            "headroom.metric 'eval_kld' is not one of the claim's metrics"),
           ({"headroom": {"metric": "eval_fid", "low": "naive", "high": "joint", "min": 0}}, "headroom.min must be")]
    for change, match in bad:
        with pytest.raises(ConfigError, match=match):
            bsuite.load_suite(_suite(tmp_path, claims=claims + [_claim(**change)]))
    with pytest.raises(ConfigError, match="used twice"):
        bsuite.load_suite(_suite(tmp_path, claims=claims + [_claim(), _claim()]))
    # a claim on a row the suite (or a scale) does not run is not measured, not an error
    suite = bsuite.load_suite(_suite(tmp_path, claims=[_claim(row="ewc_strong")]))
    assert "**not measured**" in bclaims.render_lines(suite.claims, {"naive": {"eval_fid": [1.0, 2.0]}}, {})[0]
    assert bsuite.load_suite(_suite(tmp_path, claims=[])).claims == []


def test_claim_rules_and_the_best_of_several_rows():
    at_least = bclaims.parse_claims([_claim(rule="not_worse")], "test")[0]
    naive = {"eval_fid": [11.0, 12.0]}
    assert bclaims.judge(at_least, {"ewc": {"eval_fid": [10.0, 12.0]}, "naive": naive}) == "confirmed"  # a tie
    assert bclaims.judge(at_least, {"ewc": {"eval_fid": [20.0, 21.0]}, "naive": naive}) == "not confirmed"
    assert bclaims.judge(at_least, {"ewc": {"eval_fid": [10.0]}, "naive": naive}) == "not resolved"
    same = bclaims.parse_claims([_claim(rule="equivalent", tolerance=0.1, cost="nfe")], "test")[0]
    values = {"ewc": {"eval_fid": [10.5, 10.7], "nfe": [16.0, 16.0]},
              "naive": {"eval_fid": [10.0, 10.1], "nfe": [48.0, 48.0]}}
    assert bclaims.judge(same, values) == "confirmed"  # 0.55 worse, inside 10% of 10.05
    values["ewc"]["eval_fid"] = [12.0, 12.1]
    assert bclaims.judge(same, values) == "not confirmed"
    values["ewc"]["nfe"] = []
    assert bclaims.judge(same, values) is None  # the cost is part of the claim: not measured
    evidence = "EWC {ewc.eval_fid} vs {against} {against.eval_fid}{others.eval_fid}"
    best = bclaims.parse_claims([_claim(against={"best_of": ["naive", "joint", "buffer_replay"]}, evidence=evidence)],
                                "test")[0]
    values = {"ewc": {"eval_fid": [5.0, 5.2]}, "naive": {"eval_fid": [40.0, 42.0]}, "joint": {"eval_fid": [4.0, 4.4]}}
    j = bclaims.render(best, values)
    # buffer_replay has no results: the best of the three is not known yet, whatever the two measured say
    assert j.against == "joint" and j.verdict is None
    assert ("EWC 5.1 ± 0.14 vs joint 4.2 ± 0.28; naive 41 ± 1.4: **not measured** (no results yet: buffer_replay; "
            "EWC better than naive by more than the spread).") in j.line
    values["buffer_replay"] = {"eval_fid": [6.0, 6.1]}
    j = bclaims.render(best, values)
    assert j.against == "joint" and j.verdict == "not confirmed"  # the best of all three
    assert "naive 41 ± 1.4; buffer_replay 6.05 ± 0.071: **not confirmed** (EWC better than naive" in j.line

def test_a_claim_with_a_headroom_is_judged_only_where_it_can_show():
    """GUIDE's claim needs plain replay well below joint training: with joint 0.973 and plain 0.957 (1.6
    points, this project's protocol) guided replay could not show, whatever it scores."""
    claim = bclaims.parse_claims([_claim(table="classifier", row="guided", against="plain", metrics={"acc": "higher"},
                                         headroom={"metric": "acc", "low": "plain", "high": "joint", "min": 0.05},
                                         evidence="guided {guided.acc} vs plain {plain.acc}", rule_text="")],
                                 "test")[0]
    values = {"guided": {"acc": [0.99, 0.99]}, "plain": {"acc": [0.957, 0.957]}}
    j = bclaims.render(claim, values)
    assert j.verdict is None  # joint has not run: the headroom is not known
    assert "(headroom: joint better than plain in acc by ? (no results yet) (needed: 0.05))" in j.line
    values["joint"] = {"acc": [0.972, 0.974]}
    assert bclaims.headroom(claim, values) == pytest.approx(0.016)
    j = bclaims.render(claim, values)
    assert j.verdict == "not testable"  # guided 3 points above plain, but the claim cannot show here
    assert ": **not testable here** (headroom: joint better than plain in acc by 0.016 (needed: 0.05))." in j.line
    values["plain"] = {"acc": [0.90, 0.91]}  # 6.8 points below joint: the rule decides
    assert bclaims.headroom(claim, values) == pytest.approx(0.068)
    assert bclaims.judge(claim, values) == "confirmed"
    values["guided"] = {"acc": [0.90, 0.92]}
    assert bclaims.judge(claim, values) == "not resolved"
    # a lower-is-better metric: the headroom counts in its direction
    fid = bclaims.parse_claims([_claim(headroom={"metric": "eval_fid", "low": "naive", "high": "joint", "min": 5})],
                               "test")[0]
    values = {"ewc": {"eval_fid": [20.0]}, "naive": {"eval_fid": [30.0]}, "joint": {"eval_fid": [10.0]}}
    assert bclaims.headroom(fid, values) == pytest.approx(20.0)


def test_suite_times_gain_the_commit_column_without_losing_rows(tmp_path):
    path = str(tmp_path / "suite_times.csv")
    with open(path, "w") as f:  # written before the commit column existed
        f.write("label,seed,kind,seconds,exit,finished_at,threads\nnaive,0,continual,12.5,0,2026-11-30 17:10:40,1\n")
    archive.append_time(path, {"label": "joint", "seed": 0, "kind": "continual", "seconds": 3.0, "exit": 0,
                           "finished_at": "x", "threads": 1, "commit": "abc1234"})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["seconds"], r["commit"]) for r in rows] == [("naive", "12.5", ""), ("joint", "3.0", "abc1234")]
    assert archive.commits_of(rows) == "an unrecorded commit (1 run), `abc1234` (1 run)"


def test_runs_start_when_what_they_need_is_done(tmp_path, monkeypatch):
    """The scheduler with the processes faked: order, parallelism, threads, and a failure."""
    import threading
    import time

    with open(SUITE) as f:  # the rows that share task 0 (a row of its own, the VAE's, starts at once)
        methods = {k: v for k, v in yaml.safe_load(f)["methods"].items() if not bsuite.row_settings(v)}
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1], learning_curve={}, methods=methods))
    specs = bplan.plan_runs(suite)
    first = {seed: next(s for s in specs if s.seed == seed) for seed in (0, 1)}
    assert all(s.needs == first[s.seed].label for s in specs if s.kind == "continual" and s is not first[s.seed])
    assert all(s.needs == "gd_full" for s in specs if s.kind == "solver") and first[0].needs is None

    lock, events, live = threading.Lock(), [], [0, 0]  # (start|end, label, seed, threads); now, most at once

    def fake_call(cmd, cwd, stdout, stderr):
        cfg = cmd[cmd.index("--config") + 1]
        spec = next(s for s in specs if s.config_path == cfg and s.overrides == cmd[cmd.index(cfg) + 1:-1])
        with lock:
            events.append(("start", spec.label, spec.seed, cmd[-1]))
            live[0] += 1
            live[1] = max(live)
        time.sleep(0.01)
        with lock:
            live[0] -= 1
            events.append(("end", spec.label, spec.seed, cmd[-1]))
        return 3 if spec.label == "fail_me" else 0

    monkeypatch.setattr(brun.subprocess, "call", fake_call)
    brun.run_suite(suite, specs, log=lambda m: None, jobs=3, threads=6)
    assert live[1] == 3
    pos = {(kind, label, seed): i for i, (kind, label, seed, _) in enumerate(events)}
    for s in specs:
        assert ("start", s.label, s.seed) in pos
        if s.needs:
            assert pos[("end", s.needs, s.seed)] < pos[("start", s.label, s.seed)], s.label
    threads = {(label, seed): t for kind, label, seed, t in events if kind == "start"}
    assert threads[("naive", 0)] == "train.num_threads=2"  # two go first, but three will go beside each other
    assert threads[("joint", 0)] == "train.num_threads=2"  # three at once
    used, most = 0, 0  # the threads of the processes alive at each moment never exceed the cores
    for kind, _, _, t in events:
        used += int(t.split("=")[1]) * (1 if kind == "start" else -1)
        most = max(most, used)
    assert most <= 6
    with open(tmp_path / "report" / "runs" / "suite_times.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(specs) and all(r["commit"] for r in rows)  # the commit each run ran at
    assert all(archive.is_archived(suite, s.run_dir) for s in specs)  # every finished run is archived

    # --only: a selected run brings the unfinished run it reads (seed 1's task-0 run), never starts before it
    shutil.rmtree(tmp_path / "report" / "runs")  # nothing finished yet
    events.clear()
    brun.run_suite(suite, specs, log=lambda m: None, jobs=2, threads=2, only=["gd_full"])
    starts = [(label, seed) for kind, label, seed, _ in events if kind == "start"]
    assert sorted(starts) == sorted([("gd_full", 0), ("gd_full", 1), ("naive", 0), ("naive", 1)])
    pos = {(kind, label, seed): i for i, (kind, label, seed, _) in enumerate(events)}
    assert all(pos[("end", "naive", k)] < pos[("start", "gd_full", k)] for k in (0, 1))

    # a failed run stops the suite: what needs it never starts
    specs[0].label = "fail_me"
    for s in specs:
        s.needs = "fail_me" if s.needs == "naive" and s.seed == 0 else s.needs
    events.clear()
    with pytest.raises(brun.SuiteRunError, match="fail_me .seed 0. exited with 3"):
        brun.run_suite(suite, specs, log=lambda m: None, jobs=2, threads=2)
    started = {(label, seed) for kind, label, seed, _ in events if kind == "start"}
    assert not any(s.seed == 0 and s.needs == "fail_me" and (s.label, 0) in started for s in specs)


def test_rows_that_share_task0_start_once_it_is_done(tmp_path, monkeypatch):
    """A row sharing task 0 starts when the first run has finished that task (not the whole run); a solver
    still waits for the whole diffusion run it reads."""
    import threading
    import time

    with open(SUITE) as f:
        methods = {k: v for k, v in yaml.safe_load(f)["methods"].items() if not bsuite.row_settings(v)}
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0], learning_curve={}, methods=methods))
    specs = bplan.plan_runs(suite)
    first = specs[0]
    lock, events = threading.Lock(), []

    def fake_call(cmd, cwd, stdout, stderr):
        cfg = cmd[cmd.index("--config") + 1]
        spec = next(s for s in specs if s.config_path == cfg and s.overrides == cmd[cmd.index(cfg) + 1:-1])
        with lock:
            events.append(("start", spec.label))
        if spec is first:  # its task 0 is done at once, the later tasks take a while
            os.makedirs(os.path.join(spec.run_dir, "task_0"), exist_ok=True)
            with open(os.path.join(spec.run_dir, "task_0", "task_done.json"), "w") as f:
                f.write("{}")
            time.sleep(0.5)
        else:
            time.sleep(0.01)
        with lock:
            events.append(("end", spec.label))
        return 0

    monkeypatch.setattr(brun.subprocess, "call", fake_call)
    brun.run_suite(suite, specs, log=lambda m: None, jobs=2, threads=2, poll=0.02)
    pos = {e: i for i, e in enumerate(events)}
    sharing = [s for s in specs if s.kind == "continual" and s.needs == first.label]
    assert sharing and pos[("start", sharing[0].label)] < pos[("end", first.label)]
    for s in specs:
        if s.kind == "solver":
            assert pos[("end", s.needs)] < pos[("start", s.label)]


def test_archived_runs_outlive_their_folders(tmp_path, monkeypatch):
    """A finished run's report files go to the archive (no checkpoints); on a machine without the run
    folders the archived runs count as finished, task 0 comes from the first run that can give it, and
    a run whose checkpoints a pending solver reads runs again from a cleared folder."""
    run = tmp_path / "out" / "gd_full_s0"
    _write(f"{run}/metrics.csv", [{"task": 0, "eval_fid": 3.0}, {"task": 1, "eval_fid": 4.0}])
    for t in (0, 1):
        (run / f"task_{t}").mkdir()
        (run / f"task_{t}" / "samples.png").write_bytes(b"png%d" % t)
        (run / f"task_{t}" / "model000010.pt").write_bytes(b"weights")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "solver_plain").mkdir()
    arch, out = str(tmp_path / "archive"), str(tmp_path / "out")
    assert archive.info(arch, out, str(run)) is None
    archive.save(arch, out, str(run), {"label": "gd_full", "seed": 0, "commit": "abc", "seconds": 9.5})
    kept = sorted(str(p.relative_to(tmp_path / "archive" / "gd_full_s0")) for p in (tmp_path / "archive").rglob("*")
                  if p.is_file())
    assert kept == ["archived.json", "config.yaml", "metrics.csv", "task_0/samples.png", "task_1/samples.png"]
    assert archive.info(arch, out, str(run))["seconds"] == 9.5
    assert archive.restore(arch, out, str(run)) and (run / "task_0" / "model000010.pt").exists()  # own: untouched
    elsewhere = tmp_path / "out2" / "gd_full_s0"  # a new machine
    assert archive.restore(arch, str(tmp_path / "out2"), str(elsewhere))
    assert (elsewhere / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    assert (elsewhere / "task_1" / "samples.png").read_bytes() == b"png1"
    assert not archive.has_checkpoints(str(elsewhere)) and archive.has_checkpoints(str(run))
    (elsewhere / "solver_plain").mkdir()
    archive.clear_restored(str(elsewhere))
    assert os.listdir(elsewhere) == ["solver_plain"]
    archive.clear_restored(str(run))  # a run's own folder: never cleared
    assert (run / "task_0" / "model000010.pt").exists()
    # a learning curve keeps its name: the report's table and plot read it from label.txt
    from tools.curves import label_of

    curve = tmp_path / "out" / "curve_task0"
    curve.mkdir()
    (curve / "curve.csv").write_text("images,steps,eval_fid\n8000,250,382.4\n")
    (curve / "label.txt").write_text("task 0 (IID, its classes)\n")
    archive.save(arch, out, str(curve), {"label": "curve_task0", "seed": 0, "commit": "abc", "seconds": 1.0})
    moved = tmp_path / "out2" / "curve_task0"
    assert archive.restore(arch, str(tmp_path / "out2"), str(moved))
    assert label_of(str(moved)) == "task 0 (IID, its classes)" != label_of(str(tmp_path / "out2" / "gd_full_s0"))

    # the suite: seed 0's naive, joint and gd_full archived on another machine
    import guided_diffusion.continual.methods  # noqa: F401
    import guided_diffusion.evaluation.settings  # noqa: F401

    with open(SUITE) as f:
        methods = {k: v for k, v in yaml.safe_load(f)["methods"].items() if not bsuite.row_settings(v)}
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0], learning_curve={}, methods=methods,
                                  solver={"diffusion": "gd_full", "replays": ["plain"]}))
    done = ("naive", "joint", "gd_full")
    for label in done:
        d = str(tmp_path / "elsewhere" / f"{label}_s0")
        _write(f"{d}/metrics.csv", [{"task": 0, "eval_fid": 3.0}])
        archive.save(repo.abs_path(suite.archive_dir), str(tmp_path / "elsewhere"), d, {"label": label, "seed": 0})
    specs = bplan.plan_runs(suite)
    by = {s.label: s for s in specs}
    assert by["buffer_replay"].needs is None  # the first run that will run trains task 0 ...
    assert load_config(by["buffer_replay"].config_path).continual.init_from == ""
    assert by["ewc"].needs == "buffer_replay" and by["gd_full"].needs == "buffer_replay"  # ... for the others
    assert load_config(by["ewc"].config_path).continual.init_from == by["buffer_replay"].run_dir
    started = []

    def fake_call(cmd, cwd, stdout, stderr):
        cfg = cmd[cmd.index("--config") + 1]
        spec = next(s for s in specs if s.config_path == cfg and s.overrides == cmd[cmd.index(cfg) + 1:])
        started.append(spec.label)
        return 0

    monkeypatch.setattr(brun.subprocess, "call", fake_call)
    brun.run_suite(suite, specs, log=lambda m: None)
    # naive and joint count as finished; gd_full runs again: the solver replays from its checkpoints
    assert "naive" not in started and "joint" not in started and "gd_full" in started
    assert started.index("gd_full") < started.index("solver_plain")
    assert json.loads(open(f"{by['naive'].run_dir}/restored.json").read())["label"] == "naive"
    assert not os.path.exists(f"{by['gd_full'].run_dir}/metrics.csv")  # cleared before it ran again
    archive.save(repo.abs_path(suite.archive_dir), str(tmp_path / "elsewhere"), str(tmp_path / "elsewhere" / "joint_s0"),
                     {"label": "joint", "seed": 0, "source": "recovered from an old report"})
    (line,) = breport.archive_line(suite, specs)  # the faked runs left no folders: all but gd_full (its folder here)
    assert line.startswith(f"- archive: {len(specs) - 1} run(s) ran on earlier machines; their results are read from `")
    assert line.endswith("`; 1 of them (joint s0) were recovered from an old report")


@pytest.mark.slow
def test_tiny_suite_end_to_end_with_two_jobs(tmp_path):
    """A 2-method, 2-task suite through the real scripts (two runs at once), then its report."""
    import subprocess
    import sys

    raw = {
        "name": "tiny", "out_dir": str(tmp_path / "runs"), "report_dir": str(tmp_path / "report"),
        "base": "yaml/mnist/generative_distillation_eval.yaml", "seeds": [0],
        "settings": {
            "data": {"image_size": 16}, "model": {"channel_mult": "1,2", "attention_resolutions": "8"},
            "diffusion": {"diffusion_steps": 50},
            "train": {"batch_size": 8, "save_interval": 2, "log_interval": 2},
            "continual": {"limit_tasks": 2, "num_steps": 2, "first_task_num_steps": 2, "grid_per_class": 1,
                          "eval_sampler": "5"},
            "evaluation": {"num_samples": 8, "batch_size": 8, "sampler": "5", "metrics": "fid,kld,class_acc",
                           "classifier_path": str(tmp_path / "clf.safetensors"), "classifier_epochs": 1}},
        "learning_curve": {"classes": [0, 1], "points": "16,32", "num_samples": 8},
        "methods": {"naive": {"name": "naive"}, "joint": {"name": "joint"},
                    "gd_full": {"name": "generative_distillation", "teacher_steps": 1, "replay_batch": 4},
                    "lora": {"name": "lora"},  # takes the shared task 0 as its adapted network
                    "ewc_buffer_replay": [{"name": "ewc", "num_samples": 4}, {"name": "buffer_replay"}]},
        "solver": {"diffusion": "gd_full", "replays": ["plain"],
                   "settings": {"solver": {"init_num_steps": 2, "num_steps": 2, "batch_size": 8,
                                           "sampler": "ddim2", "eval_batch_size": 64}}},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "scripts/benchmark_cl.py", "--suite", str(path), "--jobs", "2"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    report = (tmp_path / "report" / "README.md").read_text()
    assert "| gd_full | 1/1 |" in report and "| plain | 1/1 |" in report
    assert "## Task 0's learning curve" in report and (tmp_path / "report" / "report_plots" / "curve_task0.png").exists()
    assert "Task 0 converged?" in report and "Rule: a claim is *confirmed*" in report
    assert "task 0 taken from" in (tmp_path / "runs" / "gd_full_s0" / "log.txt").read_text()
    assert "task 0 taken from" in (tmp_path / "runs" / "lora_s0" / "log.txt").read_text()
    assert "| lora | 1/1 |" in report and "| ewc_buffer_replay | 1/1 |" in report and "extra state M" in report
    assert (tmp_path / "report" / "report_grids" / "gd_full_s0_task1.png").exists()
    with open(tmp_path / "report" / "runs" / "suite_times.csv") as f:
        rows = list(csv.DictReader(f))
    threads = {r["label"]: r["threads"] for r in rows}
    # the curve and task 0 go first, two at once; then the runs that take task 0
    assert {rows[0]["label"], rows[1]["label"]} == {"curve_task0", "naive"}
    assert threads["naive"] == threads["joint"] == threads["gd_full"] == str(max(1, os.cpu_count() // 2))


def test_the_report_names_the_evaluation_classifier_of_each_run():
    proto = ("500 class-conditional EMA samples after task 0, 50 ancestral vs 100 mnist5k test images; "
             "domain-cnn(mnist5k train, v1, test acc 0.9700), 64-d penultimate [model/x.safetensors]: fid")
    assert breport.features_of([{"eval_protocol": proto}]) == "domain-cnn(mnist5k train, v1, test acc 0.9700)"
    named = "domain-cnn(mnist5k train, v1, test acc 0.9740, sha256 0123456789ab)"
    assert breport.features_of([{"eval_features": named, "eval_protocol": proto}]) == named
    assert breport.features_of([{"eval_protocol": "no extractor here"}, {}]) == ""


def test_the_report_names_the_precision_of_each_run(tmp_path):
    """Runs from before train.precision was recorded ran in fp32; a suite that mixes precisions says which
    rows ran in which."""
    assert breport.precision_of([{}]).startswith("fp32 (recorded before")
    assert breport.precision_of([{"precision": "bf16", "memory_format": "channels_last", "cpu": "AVX512 amx"}]) == \
        "bf16, channels_last (CPU AVX512 amx)"
    specs = []
    for label, row in (("naive", "task,precision,memory_format,cpu\n0,bf16,contiguous,AVX512 avx512_bf16\n"),
                       ("joint", "task,eval_fid\n0,12.5\n")):
        d = tmp_path / label
        d.mkdir()
        (d / "metrics.csv").write_text(row)
        specs.append(bplan.RunSpec(label=label, seed=0, kind="continual", config_path="", run_dir=str(d)))
    (line,) = breport.precision_line(specs)
    assert "more than one precision" in line and "bf16 (CPU AVX512 avx512_bf16) (1 runs): naive s0" in line
    assert "fp32 (recorded before the column: the default then) (1 runs): joint s0" in line
    assert breport.precision_line(specs[:1]) == ["- precision: bf16 (CPU AVX512 avx512_bf16), every run"]


def test_the_papers_protocols_section_shows_each_papers_suite_and_both_verdicts(tmp_path):
    """A suite's ``papers``: another suite (a paper's protocol) whose tables and claims the report shows, and a
    table of every claim with its verdict in the paper's protocol beside the linked one here."""
    with open(SUITE) as f:
        claims = yaml.safe_load(f)["claims"]
    paper_claim = _claim(id="paper_ewc", statement="EWC forgets less (the paper's way)", protocol="pp",
                         project_claim="ewc_beats_naive", source="A paper, Table 1")
    paper = _suite(tmp_path / "paper", file_name="paper", name="paper_suite", seeds=[0, 1], learning_curve={},
                   claims=[paper_claim], protocols={"pp": {"title": "The paper's protocol", "description": "Its way."}},
                   solver={})
    here = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1], learning_curve={}, claims=claims + [_claim()],
                                    papers=[paper]))
    fid = {"naive": (400.0, 420.0), "ewc": (100.0, 110.0)}
    for suite in (here, bsuite.load_suite(paper)):
        for s in bplan.plan_runs(suite):
            if s.kind == "continual" and s.label in fid:
                scale = 1.0 if suite is here else 2.0
                _write(f"{s.run_dir}/metrics.csv", [{"task": 0, "eval_fid": 3.0},
                                                     {"task": 1, "eval_fid": scale * fid[s.label][s.seed]}])
    path = breport.write_report(here, bplan.plan_runs(here), "test")
    text = open(path).read()
    section = text.split("## The papers' protocols")[1].split("## Details")[0]
    assert "### The paper's protocol" in section and "Its full report: [paper_suite]" in section
    assert ("- *EWC forgets less (the paper's way)* — final FID EWC 210 ± 14 vs naive 820 ± 28 (joint n/a): "
            "**confirmed**") in section and "Source: A paper, Table 1." in section
    rows = [ln for ln in section.splitlines() if ln.startswith("| EWC forgets less (the paper's way)")]
    assert rows == ["| EWC forgets less (the paper's way) | A paper, Table 1 | The paper's protocol | **confirmed** | "
                    "**confirmed** |"]
    table = section.split("### Every claim in both protocols")[1]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| claim")]
    assert rows and not any("|  |" in ln for ln in rows)  # every cell says something
    assert any("| this project's protocol only | no paper protocol (not a paper's claim) |" in ln for ln in rows)
    with pytest.raises(ConfigError, match="papers: suite file nowhere.yaml not found"):
        bsuite.load_suite(_suite(tmp_path, papers=["nowhere.yaml"]))


def test_a_row_may_compose_methods_and_an_adapting_row_never_gives_task0(tmp_path):
    """``method:`` a list in a suite row (YAML aliases reuse other rows' sections); LoRA and the ensemble
    take the shared task 0 but never give it (their checkpoints are not the plain network's)."""
    import guided_diffusion.continual.methods  # noqa: F401
    import guided_diffusion.evaluation.settings  # noqa: F401

    suite = bsuite.load_suite(SUITE)
    assert suite.methods["ewc_buffer_replay"] == [suite.methods["ewc"], suite.methods["buffer_replay"]]
    methods = {"lora": {"name": "lora"}, "naive": {"name": "naive"}, "ensemble": {"name": "ensemble"},
               "ewc": {"name": "ewc", "lambd": 7.0},
               "ewc_buffer_replay": [{"name": "ewc", "lambd": 7.0}, "buffer_replay"]}
    suite = bsuite.load_suite(_suite(tmp_path, solver={}, methods=methods, learning_curve={}))
    specs = {s.label: s for s in bplan.plan_runs(suite)}
    cfgs = {k: load_config(s.config_path) for k, s in specs.items()}
    composed = cfgs["ewc_buffer_replay"].method
    assert [m.name for m in composed] == ["ewc", "buffer_replay"] and composed[0] == cfgs["ewc"].method
    assert cfgs["lora"].continual.init_from == "" and specs["lora"].needs is None  # first, yet not the source
    source = specs["naive"].run_dir
    assert all(cfgs[k].continual.init_from == source and specs[k].needs == "naive"
               for k in ("ensemble", "ewc", "ewc_buffer_replay"))


def test_the_generator_table_shows_each_methods_extra_parameters_and_state(tmp_path):
    suite = bsuite.load_suite(_suite(tmp_path, seeds=[0, 1], solver={}, learning_curve={}))
    specs = [s for s in bplan.plan_runs(suite) if s.label in ("naive", "lora", "ewc_buffer_replay")]
    cost = {"naive": {"extra_state_M": 0.0}, "lora": {"extra_params": 150000, "extra_state_M": 0.0},
            "ewc_buffer_replay": {"extra_state_M": 6.1}}
    for s in specs:
        _write(f"{s.run_dir}/metrics.csv", [{"task": 0, "sec_per_step": 1.0, "eval_fid": 3.0, **cost[s.label]},
                                            {"task": 1, "sec_per_step": 2.0, "eval_fid": 4.0, **cost[s.label]}])
    header, rows, values = tables.method_table(suite, specs)
    by = {r[0]: dict(zip(header, r)) for r in rows}
    assert (by["lora"]["extra params M"], by["lora"]["extra state M"]) == ("0.15", "0")  # one value: the seeds agree
    assert (by["ewc_buffer_replay"]["extra params M"], by["ewc_buffer_replay"]["extra state M"]) == ("0", "6.1")
    assert by["naive"]["extra params M"] == "0" and values["lora"]["extra_params"] == [0.15, 0.15]
    assert by["si"]["extra state M"] == ""  # no finished run
