"""The suite's report: ``<report_dir>/README.md`` (``write_report``).

The headline tables (mean and spread over seeds, ``tables``), task 0's learning curve, the suite's
claims with a verdict computed from the numbers (``claims``), and, below, the per-run report of
``evaluation.report`` (per-task tables, metric-vs-task plots, every sample grid, copied); the
command, commit and machine that made it.
"""

from __future__ import annotations

import os
import platform
import re
import time
from typing import Dict, List, Optional

from guided_diffusion.evaluation.report import as_number, md_table
from guided_diffusion.evaluation.seeds import RULE, mean_std
from guided_diffusion.runtime.logger import read_csv

from . import archive
from .claims import render, render_section, verdict_text
from .plan import RunSpec
from .repo import ROOT, abs_path, dirty, git
from .suite import Suite, task0_images
from .tables import convergence_check, method_table, solver_table


def write_report(suite: Suite, specs: List[RunSpec], command_line: str, wall_sec: Optional[float] = None) -> str:
    """Write ``<report_dir>/README.md`` (headline, claims, protocol) and the per-run report beside it."""
    from guided_diffusion.evaluation.report import build_report

    report_dir = abs_path(suite.report_dir)
    os.makedirs(report_dir, exist_ok=True)
    archive.restore_archived(suite, specs)  # a report on a new machine: the archived runs
    try:
        detail, _ = build_report(abs_path(suite.out_dir), report_dir, f"{suite.name}: every run", copy_grids=True)
    except FileNotFoundError:  # no continual run has finished yet (only the learning curve, say)
        detail = os.path.join(report_dir, "report.md")
    mh, mr, mm = method_table(suite, specs)
    sh, sr, sm = solver_table(suite, specs)
    times = read_csv(archive.times_path(suite))
    total = sum(as_number(r["seconds"]) or 0 for r in times)
    commit = git("rev-parse", "HEAD")
    uncommitted = " (with uncommitted changes)" if dirty() else ""
    import torch

    with open(abs_path(suite.base)) as f:
        base_text = f.read()
    lines = [
        f"# Fidelity benchmark: {suite.name}{f' (scale {suite.scale})' if suite.scale else ''}", "",
        suite.description.strip(), "",
        f"- command: `{command_line}`",
        f"- commit: `{commit}`{uncommitted}; the runs ran at {archive.commits_of(times)}",
        *archive_line(suite, specs),
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; "
        + ("" if wall_sec is None else f"wall clock of the suite command: {wall_sec / 60:.1f} min; ")
        + f"sum of the runs' process times: {total / 60:.1f} min",
        *features_line(specs),
        *precision_line(specs),
        f"- seeds: {', '.join(map(str, suite.seeds))}; base config `{suite.base}` with `{suite.path}`'s settings "
        f"(every run's resolved config is in `{os.path.relpath(os.path.join(abs_path(suite.out_dir), 'configs'), ROOT)}`)",
        "",
        "## Generator (continual diffusion model), after the last task", "",
        "FID: domain-classifier features (the offline metric of this project), generated samples against the test "
        "images of all seen classes; KLD/ARD: class histogram of the samples (evaluation classifier) against the "
        "true one; class acc: the evaluation classifier's accuracy on class-conditional samples; avg acc / "
        "forgetting: the same accuracy per task over the task sequence. s/step and teacher NFE/step: tasks 1+ "
        "(where the methods differ). The methods' memory, in millions of numbers: extra params M, parameters "
        "beyond the network's (LoRA's adapters of every task, the ensemble's other networks); extra state M, what "
        "the method keeps after the last task beside the network (EWC's Fisher and anchor per task, SI's and "
        "MAS's importances and anchor, L2's anchor, a generative method's teacher, a buffer's or A-GEM's memory "
        "images counted as pixels; a DKDM cache on disk is not counted; blank: a run from before the column). "
        "CLoG's metrics (Zhang et al. 2024) from "
        "the quality of each task's classes after each task: AIQ (average incremental quality: the mean over "
        "tasks t of the mean quality of tasks 0..t after task t), AFQ (average final quality, after the last "
        "task; for accuracy it is avg acc) and FR (forgetting rate: how far each old task fell from its best, on "
        "average), for the sample accuracy and for the per-task FID (task j's samples against task j's test "
        "images). Mean ± std over seeds.", "",
        md_table(mh, mr), "", convergence_check(mm), "",
    ]
    curve = next((sp for sp in specs if sp.kind == "curve"), None)
    if curve is not None and os.path.isfile(os.path.join(curve.run_dir, "curve.csv")):
        from ..curves import curve_table, plot_curves

        plots = os.path.join(report_dir, "report_plots")
        os.makedirs(plots, exist_ok=True)
        plot_curves([curve.run_dir], os.path.join(plots, "curve_task0.png"),
                    title="task 0's classes, IID: the learning curve of the suite's model")
        lines += ["## Task 0's learning curve", "",
                  "The suite's model trained IID on task 0's classes (`scripts/learning_curve.py`, the same "
                  "evaluation), evaluated as the images seen double: where more training stops paying. "
                  f"Task 0 of every run trains for {task0_images(suite)} images.", "",
                  "![task 0 learning curve](report_plots/curve_task0.png)", "", curve_table([curve.run_dir]), ""]
    if sr:
        lines += ["## Classifier (solver) with replay from the generator", "",
                  f"The classifier learns task after task; replay comes from the `{suite.solver['diffusion']}` "
                  "generator of the previous task (`none`: fine-tuning, `joint`: all real data so far).", "",
                  md_table(sh, sr), ""]
    lines += (["## The papers' claims, checked", "", f"Rule: {RULE}.", ""]
              + render_section(suite.claims, mm, sm, suite.protocols) + [""])
    lines += papers_section(suite, mm, sm)
    lines += ["## Details", "", f"Per-run tables, metric-vs-task plots and every sample grid: "
              f"[{os.path.basename(detail)}]({os.path.basename(detail)}) "
              f"([HTML](report.html)).", "", "## Base config", "", "```yaml", base_text.strip(), "```", "",
              "## Suite", "", "```yaml", open(suite.path).read().strip(), "```", ""]
    path = os.path.join(report_dir, "README.md")
    from guided_diffusion.runtime.checkpoint import atomic_write_text

    atomic_write_text(path, "\n".join(lines))
    return path


def papers_section(suite: Suite, generator, classifier) -> List[str]:
    """The suites in the papers' own protocols (``suite.papers``): each one's tables and claims, then every
    claim in its paper's protocol beside the verdict of the same statement in this suite's protocol
    (``project_claim``), and this suite's claims that no paper makes (this project's hypotheses)."""
    if not suite.papers and not suite.ablations:
        return []
    from .plan import plan_runs
    from .suite import load_suite

    here = {c.id: c for c in suite.claims}

    def verdict(c, gen, clf):
        return render(c, gen if c.table == "generator" else clf).verdict

    lines = ["## The papers' protocols", "",
             "Each paper's claim tested the way the paper made it: a suite of its own that keeps the settings of "
             "the authors' code wherever they change results and scales only the size (what is scaled: each "
             "description). Every claim quotes its source; the rule is the one above.", ""]
    summary = []
    for path in suite.papers:
        paper = load_suite(path)
        specs = plan_runs(paper)
        archive.restore_archived(paper, specs)
        mh, mr, pm = method_table(paper, specs)
        sh, sr, ps = solver_table(paper, specs)
        title = next(iter(paper.protocols.values()), {}).get("title") or paper.name
        link = os.path.relpath(os.path.join(abs_path(paper.report_dir), "README.md"), abs_path(suite.report_dir))
        lines += [f"### {title}", "", paper.description.strip(), "",
                  f"Its full report: [{paper.name}]({link}); `python scripts/benchmark_cl.py --suite {path} --jobs 2`.",
                  "", *precision_line([s for s in specs if s.kind == "continual"]), ""]
        if mr:
            lines += ["Generator, after the last task:", "", md_table(mh, mr), ""]
        if sr:
            lines += [f"Classifier, replay from `{paper.solver['diffusion']}`:", "", md_table(sh, sr), ""]
        for c in paper.claims:
            j = render(c, pm if c.table == "generator" else ps)
            lines.append(f"- {j.line} Source: {c.source}.")
            other = here.get(c.project_claim)
            summary.append((c.statement, c.source, title, verdict_text(j.verdict),
                            verdict_text(verdict(other, generator, classifier)) if other else "not tested here"))
        lines.append("")
    for ab in suite.ablations:
        lines += ablation_lines(ab, suite, summary)
    linked = {c.project_claim for path in suite.papers for c in load_suite(path).claims}
    for c in suite.claims:
        if c.id not in linked:
            summary.append((c.statement, c.source, "this project's protocol only",
                            "no paper protocol (not a paper's claim)",
                            verdict_text(verdict(c, generator, classifier))))
    lines += ["### Every claim in both protocols", "",
              md_table(["claim", "source", "tested in", "verdict there", "verdict in this project's protocol"],
                       [list(r) for r in summary]), ""]
    return lines


_VERDICT = re.compile(r"^- \*(?P<statement>[^*]+)\*.*\*\*(?P<verdict>[^*]+)\*\*")


def ablation_lines(ab: Dict[str, str], suite: Suite, summary: list) -> List[str]:
    """An ablation another script reports (``suite.ablations``): its README's table and verdicts, with the
    command, source and note of the suite file; each verdict joins the claims' summary."""
    readme = os.path.join(abs_path(ab["results"]), "README.md")
    link = os.path.relpath(readme, abs_path(suite.report_dir))
    lines = [f"### {ab['title']}", ""]
    if ab.get("command"):
        lines += [f"`{ab['command']}`; its full report: [{ab['results']}]({link}).", ""]
    if not os.path.isfile(readme):
        return lines + ["Not run yet.", ""]
    text = open(readme).read().splitlines()
    table = [t for t in text if t.startswith("|")]
    start = text.index("## Verdicts") + 1 if "## Verdicts" in text else len(text)
    verdicts = []
    for t in text[start:]:
        if t.startswith("## "):
            break
        if t.startswith("- "):
            verdicts.append(t)
    lines += [*table, "", *verdicts, ""]
    if ab.get("note"):
        lines += [ab["note"].strip(), ""]
    for v in verdicts:
        m = _VERDICT.match(v)
        if m:
            summary.append((m["statement"], ab.get("source", ""), ab["title"], m["verdict"],
                            "not tested here (the suite runs no such ablation)"))
    return lines


_FEATURES = re.compile(r"[\w-]+\([^()]*test acc [^()]*\)")


def features_of(rows_: List[Dict[str, str]]) -> str:
    """The evaluation features a run's ``metrics.csv`` was measured with: its ``eval_features``, or
    (runs from before that column) the extractor named in ``eval_protocol``; "" when unrecorded."""
    for r in rows_:
        if r.get("eval_features"):
            return r["eval_features"]
        m = _FEATURES.search(r.get("eval_protocol") or "")
        if m:
            return m.group(0)
    return ""


def features_line(specs: List[RunSpec]) -> List[str]:
    """A line naming the evaluation classifier(s) the diffusion runs were measured with: FIDs under two
    classifiers do not compare exactly, so a suite measured with more than one says so, with the runs
    of each and the real-data floor after task 0 under each."""
    by: Dict[str, List[str]] = {}
    floor: Dict[str, List[float]] = {}
    for s in specs:
        if s.kind != "continual":
            continue
        rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
        if not rows_:
            continue
        f = features_of(rows_) or "unrecorded (recovered from an earlier report)"
        by.setdefault(f, []).append(f"{s.label} s{s.seed}")
        v = as_number(rows_[0].get("eval_fid_real"))
        if v is not None:
            floor.setdefault(f, []).append(v)
    if len(by) <= 1:
        return [f"- evaluation features: {next(iter(by))}"] if by else []
    parts = [f"`{f}` ({len(runs)} runs" + (f"; real-data floor after task 0 {mean_std(floor[f])}" if f in floor else "")
             + "): " + ", ".join(runs) for f, runs in sorted(by.items(), key=lambda kv: -len(kv[1]))]
    return ["- evaluation features: **more than one evaluation classifier** measured these runs (it was trained "
            "anew on each machine before it shipped in `model/`); FIDs under two classifiers agree only to within "
            "the difference of their real-data floors (the floor, the same real images under each classifier, also tells an "
            "unrecorded one apart): " + "; ".join(parts)]


def precision_of(rows_: List[Dict[str, str]]) -> str:
    """The precision a run trained and sampled in (``metrics.csv``'s ``precision``, ``memory_format`` and
    ``cpu``, written since ``train.precision: auto``); runs from before those columns ran in fp32, the
    default then."""
    r = rows_[0] if rows_ else {}
    if not r.get("precision"):
        return "fp32 (recorded before the column: the default then)"
    layout = ", channels_last" if r.get("memory_format") == "channels_last" else ""
    return f"{r['precision']}{layout}" + (f" (CPU {r['cpu']})" if r.get("cpu") else "")


def precision_line(specs: List[RunSpec]) -> List[str]:
    """A line naming the precision(s) the diffusion runs ran in, with the rows of each when they differ."""
    by: Dict[str, List[str]] = {}
    for s in specs:
        if s.kind != "continual":
            continue
        rows_ = read_csv(os.path.join(s.run_dir, "metrics.csv"))
        if rows_:
            by.setdefault(precision_of(rows_), []).append(f"{s.label} s{s.seed}")
    if len(by) <= 1:
        return [f"- precision: {next(iter(by))}, every run"] if by else []
    parts = [f"{p} ({len(runs)} runs): {', '.join(runs)}" for p, runs in sorted(by.items(), key=lambda kv: -len(kv[1]))]
    return ["- precision: **the runs ran in more than one precision** (train.precision auto picks bf16 where the CPU "
            "runs it natively; the main job's 3-seed check of fp32 against auto is in docs/performance.md): "
            + "; ".join(parts)]


def archive_line(suite: Suite, specs: List[RunSpec]) -> List[str]:
    """A line on the runs whose results come from the archive (run on earlier machines), and on those
    recovered from an earlier report rather than archived when they finished (their ``source``)."""
    records = archive.archived_records(suite, specs)
    if not records:
        return []
    recovered = [(s, r) for s, r in records if r.get("source")]
    line = (f"- archive: {len(records)} run(s) ran on earlier machines; their results are read from "
            f"`{os.path.relpath(abs_path(suite.archive_dir), ROOT)}`")
    if recovered:
        line += (f"; {len(recovered)} of them ({', '.join(f'{s.label} s{s.seed}' for s, _ in recovered)}) were "
                 f"{recovered[0][1]['source']}")
    return [line]


__all__ = ["write_report", "papers_section", "features_of", "features_line", "precision_of", "precision_line", "archive_line"]
