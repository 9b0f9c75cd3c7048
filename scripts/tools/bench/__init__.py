"""The fidelity benchmark (``scripts/benchmark_cl.py``): every continual method on one scenario, same
model, steps, seeds and evaluation, then one comparison report with the suite's claims checked.

One concern a module, each depending only on those above it:

- ``repo``: the repository's root (a suite's paths are relative to it) and its commit;
- ``archive``: the committed record of finished runs (``<report_dir>/runs/``) and ``suite_times.csv``;
- ``tables``: the headline tables (generator, classifier) and the per-seed values behind them;
- ``claims``: the claims a suite declares (its ``claims:`` entries: rows, metrics, direction, rule,
  source, protocol) and their verdicts, judged by ``guided_diffusion.evaluation.seeds``;
- ``suite``: the suite file (format in its docstring), read and checked;
- ``plan``: the runs (configs written and checked, the shared task 0, what each run needs first);
- ``run``: the runs as subprocesses of the scripts, ``--jobs`` at once, archived as they finish;
- ``report``: ``<report_dir>/README.md``.
"""
