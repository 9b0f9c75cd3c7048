"""Tools beside the scripts, not part of the library: the benchmark suite (``bench``), the
fault matrix (``fault_matrix``) and the learning curves (``curves``). They launch the
scripts as subprocesses and write reports; ``scripts/benchmark_cl.py``, ``scripts/fault_injection.py``
and ``scripts/learning_curve.py`` are their entry points (``scripts/`` is on ``sys.path`` there)."""
