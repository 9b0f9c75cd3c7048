"""scripts/tools/replay_check.py: the background measure worked by hand, and bad input refused before any work."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

from tools import replay_check  # noqa: E402


def test_background_is_the_distance_to_black_of_the_dark_pixels():
    # dark pixels (< -0.8): -1, -1, -0.9, -0.98 -> distances 0, 0, 0.1, 0.02; the stroke (0.5, -0.2) is left out
    x = torch.tensor([[[[-1.0, -1.0, 0.5], [-0.9, -0.98, -0.2]]]])
    dist, black = replay_check.background(x)
    assert dist == pytest.approx(0.03)
    assert black == pytest.approx(0.5)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert replay_check.main(["--solver", str(tmp_path), "--task", "1"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    for task in ("0", "3"):  # task 0 has no replay; task 3 was not finished (no task_3.done.json)
        assert replay_check.main(["--solver", str(tmp_path), "--task", task]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give a task >= 1 that the solver run has finished" in err
