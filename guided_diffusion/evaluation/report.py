"""Markdown and HTML reports of continual runs, from their logs only.

``build_report(path)`` takes a run folder (one with ``metrics.csv``) or a folder of runs and writes
``report.md``, ``report.html`` and ``report_plots/*.png`` into ``path`` (or ``out_dir``). It reads
``metrics.csv`` (a row per finished task), ``task_*/progress.csv`` (to show a task in progress),
``config.yaml`` (only to label the method) and links ``task_*/samples.png``; it loads no model,
so it works on finished and on partial runs.

Per run: a table of the per-task rows (cost per step, final loss, the ``eval_*`` metrics), the
evaluation protocol, the generator's accuracy matrix (``eval_acc_task_j`` after each task) with
average accuracy and forgetting, and the sample grid of each task. Across runs: a summary table
(final metrics and cost) and one metric-vs-task plot per metric.
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..runtime.logger import read_csv
from .class_metrics import accuracy_matrix, average_accuracy, forgetting

# Metrics plotted against the task index (when present), with their display names.
PLOT_METRICS = {
    "eval_fid": "FID (domain features)",
    "eval_kld": "KLD (true || pred)",
    "eval_ard": "ARD",
    "eval_class_acc": "per-class accuracy of samples",
    "eval_precision": "precision (k=3)",
    "eval_recall": "recall (k=3)",
    "final_loss": "final training loss",
    "sec_per_step": "seconds per step",
}
SUMMARY = {"eval_fid": "FID", "eval_fid_real": "FID real (floor)", "eval_kld": "KLD", "eval_ard": "ARD", "eval_class_acc": "class acc",
           "eval_precision": "precision", "eval_recall": "recall"}
TASK_COLUMNS = ["task", "classes", "steps", "images", "sec_per_step", "train_sec", "before_task_sec",
                "after_task_sec", "final_loss", "final_replay_loss"]


@dataclass
class Run:
    path: str
    name: str
    method: str
    rows: List[Dict[str, str]]
    grids: List[Tuple[int, str]] = field(default_factory=list)  # (task, path of samples.png)
    in_progress: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.method} ({self.name})" if self.method and self.method != self.name else self.name


def as_number(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v) -> str:
    f = as_number(v)
    if f is None:
        return "" if v is None else str(v)
    if float(f).is_integer() and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.4g}"


def _method_of(run_dir: str) -> str:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return ""
    try:
        import yaml

        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except Exception:  # a label only: never fail the report on it
        return ""
    m = cfg.get("method") or {}
    if isinstance(m, list):  # methods applied together
        return "+".join(_method_label(e) for e in m if isinstance(e, dict) and e.get("name"))
    if not isinstance(m, dict) or not m.get("name"):
        return "naive" if cfg.get("continual") else ""
    return _method_label(m)


def _method_label(m: dict) -> str:
    variant = m.get("source") or m.get("style") or ""
    return f"{m['name']}:{variant}" if variant else str(m["name"])


def _task_index(name: str) -> Optional[int]:
    m = re.fullmatch(r"task_(\d+)", name)
    return int(m.group(1)) if m else None


def read_run(run_dir: str) -> Run:
    rows = read_csv(os.path.join(run_dir, "metrics.csv"))
    rows.sort(key=lambda r: as_number(r.get("task")) or 0)
    tasks = sorted((t, n) for n in os.listdir(run_dir) if (t := _task_index(n)) is not None
                   and os.path.isdir(os.path.join(run_dir, n)))
    grids = [(t, os.path.join(run_dir, n, "samples.png")) for t, n in tasks
             if os.path.isfile(os.path.join(run_dir, n, "samples.png"))]
    done = {int(as_number(r.get("task")) or 0) for r in rows}
    in_progress = None
    for t, n in tasks:
        if t in done:
            continue
        prog = os.path.join(run_dir, n, "progress.csv")
        last = (read_csv(prog) or [None])[-1]
        step = f" at step {last.get('step', '?')}" if last else ""
        in_progress = f"task {t} in progress{step}"
    return Run(run_dir, os.path.basename(os.path.normpath(run_dir)), _method_of(run_dir), rows, grids, in_progress)


def find_runs(path: str) -> List[str]:
    """``path`` if it is a run (has metrics.csv or task_* folders), else the runs below it (depth 2)."""
    def is_run(p):
        return os.path.isfile(os.path.join(p, "metrics.csv")) or any(
            _task_index(n) is not None for n in os.listdir(p) if os.path.isdir(os.path.join(p, n)))

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a folder")
    if is_run(path):
        return [path]
    runs = []
    for root, dirs, _ in os.walk(path):
        depth = os.path.relpath(root, path).count(os.sep)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "report_plots")
        if root != path and is_run(root):
            runs.append(root)
            dirs[:] = []
        elif depth >= 1:
            dirs[:] = []
    if not runs:
        raise FileNotFoundError(f"{path}: no run folder (with metrics.csv or task_* folders) found")
    return runs


def _acc_matrix(run: Run) -> Optional[np.ndarray]:
    keys = sorted({int(m.group(1)) for r in run.rows for k in r if (m := re.fullmatch(r"eval_acc_task_(\d+)", k))})
    if not keys or not run.rows:
        return None
    per_row = [{j: v for j in keys if (v := as_number(r.get(f"eval_acc_task_{j}"))) is not None} for r in run.rows]
    return accuracy_matrix(per_row, len(run.rows))


def _summary(run: Run) -> Dict[str, str]:
    last = run.rows[-1] if run.rows else {}
    out = {"method": run.label, "tasks done": str(len(run.rows))}
    for k, name in SUMMARY.items():
        out[name] = _fmt(last.get(k))
    r = _acc_matrix(run)
    out["avg acc"] = _fmt(average_accuracy(r)) if r is not None else ""
    out["forgetting"] = _fmt(forgetting(r)) if r is not None else ""
    sps = [v for row in run.rows if (v := as_number(row.get("sec_per_step"))) is not None]
    out["sec/step"] = _fmt(np.mean(sps)) if sps else ""
    tr = [v for row in run.rows if (v := as_number(row.get("train_sec"))) is not None]
    out["train s"] = _fmt(np.sum(tr)) if tr else ""
    ev = [v for row in run.rows if (v := as_number(row.get("eval_sec"))) is not None]
    out["eval s"] = _fmt(np.sum(ev)) if ev else ""
    if run.in_progress:
        out["tasks done"] += f" ({run.in_progress})"
    return out


def _task_table(run: Run) -> Tuple[List[str], List[List[str]]]:
    present = set().union(*(r.keys() for r in run.rows)) if run.rows else set()
    evals = [k for k in run.rows[0].keys() if k.startswith("eval_") and k not in ("eval_protocol",)
             and not k.startswith("eval_acc_class_") and not k.startswith("eval_acc_task_")] if run.rows else []
    for r in run.rows[1:]:
        evals += [k for k in r if k.startswith("eval_") and k not in evals and k != "eval_protocol"
                  and not k.startswith(("eval_acc_class_", "eval_acc_task_"))]
    cols = [c for c in TASK_COLUMNS if c in present] + evals
    return cols, [[_fmt(r.get(c)) if c != "classes" else str(r.get(c, "")) for c in cols] for r in run.rows]


def task_summary(run_dir: str) -> str:
    """A plain-text table of a run's finished tasks, for the end of a run: per task the classes seen,
    the training steps and seconds, and (evaluated runs) the evaluation classifier's accuracy on the
    model's class-conditional samples, the domain FID and its real-data floor."""
    run = read_run(run_dir)
    if not run.rows:
        return f"{run_dir}: no finished task"
    cols = [("task", "task"), ("seen_classes", "classes seen"), ("steps", "steps"), ("train_sec", "train s"),
            ("eval_class_acc", "sample acc"), ("eval_fid", "FID"), ("eval_fid_real", "FID real floor"),
            ("eval_sec", "eval s")]
    cols = [(k, n) for k, n in cols if any(r.get(k) not in (None, "") for r in run.rows)]
    table = [[n for _, n in cols]] + [[_fmt(r.get(k)) for k, _ in cols] for r in run.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    out = "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])
    r = _acc_matrix(run)
    if r is not None and len(run.rows) > 1:
        out += (f"\naverage sample accuracy over tasks {_fmt(average_accuracy(r))}, forgetting "
                f"{_fmt(forgetting(r))} (evaluation classifier on each task's classes)")
    return out


# Drawn dashed on a metric's plot: eval_fid_real, the FID of as many real images (the floor).
COMPANIONS = {"eval_fid": ("eval_fid_real", "real-data floor")}


def _plot(runs: List[Run], metric: str, title: str, path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for run in runs:
        pts = [(int(as_number(r.get("task")) or 0), v) for r in run.rows if (v := as_number(r.get(metric))) is not None]
        if pts:
            series.append((run.label, pts))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    floors = []  # a companion line per distinct series: runs on the same data share one floor
    for (label, pts), run in zip(series, [r for r in runs if any(as_number(x.get(metric)) is not None for x in r.rows)]):
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, marker="o", label=label)
        other = COMPANIONS.get(metric)
        floor = [(int(as_number(r.get("task")) or 0), v) for r in run.rows if other and (v := as_number(r.get(other[0]))) is not None]
        if floor and not any(np.allclose(np.asarray(floor), np.asarray(f)) for f in floors if len(f) == len(floor)):
            floors.append(floor)
            fx, fy = zip(*floor)
            ax.plot(fx, fy, ls="--", marker=".", color="0.35", label=other[1])
    ax.set_xlabel("after task")
    ax.set_ylabel(title)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def md_table(header: List[str], rows: List[List[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: List[str], rows: List[List[str]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.protocol{font-size:12px;color:#555}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0}.grids img{image-rendering:pixelated;max-width:260px}
.plots img{max-width:560px;margin:4px}"""


def build_report(path: str, out_dir: Optional[str] = None, title: Optional[str] = None,
                 copy_grids: bool = False) -> Tuple[str, str]:
    """Write report.md, report.html and report_plots/ for the run(s) at ``path``; returns both paths.

    ``copy_grids``: copy the sample grids into ``out_dir/report_grids/`` and link the copies (a report
    that stands alone, e.g. to check in), instead of linking them in the run folders."""
    runs = [read_run(p) for p in find_runs(path)]
    out_dir = out_dir or path
    os.makedirs(out_dir, exist_ok=True)
    if copy_grids:
        import shutil

        os.makedirs(os.path.join(out_dir, "report_grids"), exist_ok=True)
        for run in runs:
            copies = []
            for t, p in run.grids:
                dst = os.path.join(out_dir, "report_grids", f"{run.name}_task{t}.png")
                shutil.copyfile(p, dst)
                copies.append((t, dst))
            run.grids = copies
    rel = lambda p: os.path.relpath(p, out_dir).replace(os.sep, "/")  # noqa: E731
    title = title or f"Report: {os.path.basename(os.path.normpath(path))}"

    summaries = [_summary(r) for r in runs]
    # Columns empty for every run are left out (e.g. no evaluation was configured); say so once.
    s_header = [k for k in summaries[0] if k in ("method", "tasks done") or any(s[k] for s in summaries)]
    s_rows = [[s[k] for k in s_header] for s in summaries]
    no_eval = not any(s[name] for s in summaries for name in SUMMARY.values())
    eval_hint = ("No run was evaluated (set `evaluation.enabled: true`, e.g. with "
                 "`yaml/mnist/generative_distillation_eval.yaml`, for FID, KLD and class accuracy per task).")
    plots = []
    for metric, name in PLOT_METRICS.items():
        png = os.path.join(out_dir, "report_plots", f"{metric}.png")
        if _plot(runs, metric, name, png):
            plots.append((metric, name, rel(png)))

    md = [f"# {title}", "", f"{len(runs)} run(s). Final metrics are those after the last finished task; "
          "`avg acc` and `forgetting` come from the generator's accuracy matrix (the evaluation classifier's "
          "accuracy on each task's classes of class-conditional samples, after each task).", "",
          "## Summary", "", md_table(s_header, s_rows), ""] + ([eval_hint, ""] if no_eval else [])
    hp = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
          f"<p>{len(runs)} run(s). Final metrics are those after the last finished task; <i>avg acc</i> and "
          "<i>forgetting</i> come from the generator's accuracy matrix.</p>",
          "<h2>Summary</h2>", _html_table(s_header, s_rows)] + ([f"<p>{html.escape(eval_hint)}</p>"] if no_eval else [])
    if plots:
        md += ["## Metrics after each task", ""] + [f"![{n}]({p})" for _, n, p in plots] + [""]
        hp += ["<h2>Metrics after each task</h2><div class='plots'>"]
        hp += [f"<img src='{html.escape(p)}' alt='{html.escape(n)}'>" for _, n, p in plots] + ["</div>"]
    for run in runs:
        where = f"Folder: `{rel(run.path) or '.'}`" + (f"; {run.in_progress}" if run.in_progress else "")
        md += [f"## {run.label}", "", where, ""]
        hp += [f"<h2>{html.escape(run.label)}</h2><p>Folder: <code>{html.escape(rel(run.path) or '.')}</code>"
               + (f"; {html.escape(run.in_progress)}" if run.in_progress else "") + "</p>"]
        if run.rows:
            header, rows = _task_table(run)
            md += [md_table(header, rows), ""]
            hp += [_html_table(header, rows)]
            protocol = run.rows[-1].get("eval_protocol")
            if protocol:
                md += [f"Evaluation protocol: {protocol}", ""]
                hp += [f"<p class='protocol'>Evaluation protocol: {html.escape(protocol)}</p>"]
            r = _acc_matrix(run)
            if r is not None:
                header = ["after task"] + [f"task {j}" for j in range(r.shape[1])]
                rows = [[str(i)] + [_fmt(v) if not np.isnan(v) else "" for v in r[i]] for i in range(r.shape[0])]
                md += ["Accuracy matrix (rows: after task i; columns: classes of task j):", "", md_table(header, rows), ""]
                hp += ["<p>Accuracy matrix (rows: after task i; columns: classes of task j):</p>", _html_table(header, rows)]
        else:
            md += ["No finished task yet.", ""]
            hp += ["<p>No finished task yet.</p>"]
        if run.grids:
            md += ["Samples after each task (one row per seen class):", ""]
            md += [f"- task {t}: ![task {t}]({rel(p)})" for t, p in run.grids] + [""]
            hp += ["<p>Samples after each task (one row per seen class):</p><div class='grids'>"]
            hp += [f"<figure><img src='{html.escape(rel(p))}' alt='task {t}'><figcaption>task {t}</figcaption></figure>"
                   for t, p in run.grids] + ["</div>"]
    hp += ["</body></html>"]
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    from ..runtime.checkpoint import atomic_write_text

    atomic_write_text(md_path, "\n".join(md) + "\n")
    atomic_write_text(html_path, "\n".join(hp) + "\n")
    return md_path, html_path
