"""The benchmark report's ablations (suite key ``ablations``): another script's results folder shown in the
papers' section, its table and verdicts copied and each verdict added to the claims' summary."""

import pytest
from tools.bench import report as breport
from tools.bench import suite as bsuite

import yaml
from guided_diffusion.runtime.config import ConfigError

README = """# DKDM on mnist5k

- command: ...

| model | seeds | FID |
|---|---|---|
| student_dynamic | 3 | 40.4 ± 0.4 |

## Verdicts

Rule: ...

- *The dynamic student beats the baseline* (same student): FID 40 vs 60: **confirmed**.
- *Order iterative > dynamic*: 929 > 40: **not resolved**.

## Samples

- not a verdict
"""


def _suite(tmp_path, ablations):
    raw = {"name": "s", "base": "yaml/mnist/naive.yaml", "methods": {"naive": {"name": "naive"}},
           "out_dir": str(tmp_path / "runs"), "report_dir": str(tmp_path / "report"), "ablations": ablations}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return bsuite.load_suite(str(path))


def test_an_ablation_s_table_and_verdicts_join_the_report(tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "README.md").write_text(README)
    suite = _suite(tmp_path, [{"title": "DKDM here", "results": str(tmp_path / "res"), "command": "python x.py",
                               "source": "Xiang et al.", "note": "checked."}])
    summary = []
    lines = breport.ablation_lines(suite.ablations[0], suite, summary)
    assert lines[0] == "### DKDM here"
    assert "| student_dynamic | 3 | 40.4 ± 0.4 |" in lines and "checked." in lines
    assert [x for x in lines if x.startswith("- ")] == [x for x in README.splitlines() if x.startswith("- *")]  # the verdicts only
    here = "not tested here (the suite runs no such ablation)"  # no blank cell in the claims' summary
    assert summary == [("The dynamic student beats the baseline", "Xiang et al.", "DKDM here", "confirmed", here),
                       ("Order iterative > dynamic", "Xiang et al.", "DKDM here", "not resolved", here)]
    missing = _suite(tmp_path, [{"title": "later", "results": str(tmp_path / "none")}])
    assert breport.ablation_lines(missing.ablations[0], missing, []) == ["### later", "", "Not run yet.", ""]


def test_a_bad_ablation_entry_is_refused_when_the_suite_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"ablations\[0\]: give title and results"):
        _suite(tmp_path, [{"title": "t"}])
    with pytest.raises(ConfigError, match=r"unknown: \['resutls'\]"):
        _suite(tmp_path, [{"title": "t", "results": "r", "resutls": "r"}])
