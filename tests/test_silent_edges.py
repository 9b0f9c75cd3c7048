"""Issue 37: no silent surprises for a guided-diffusion user. Each habit either works or fails with
one line (``error: ...``, exit 2) that names the fix, before anything is written to disk."""

import os

import numpy as np
import pytest

from test_reliability_inputs import ROOT, TINY, one_error, run_script, snapshot

B = ["--config", "yaml/mnist/naive.yaml", "continual.num_steps=2", "continual.first_task_num_steps=2"]


# ---------------------------------------------------------------------------------------------- counts (item 4)


@pytest.mark.parametrize("override,key", [
    ("continual.num_steps=-5", "continual.num_steps must be >= 0"),
    ("continual.first_task_num_steps=-2", "continual.first_task_num_steps must be >= 0 (or -1: unset)"),
    ("train.total_steps=-3", "train.total_steps must be > 0"),
    ("continual.grid_per_class=-1", "continual.grid_per_class must be >= 0"),
    ("train.save_interval=-10", "train.save_interval must be >= 0"),
])
def test_negative_counts_are_refused_at_load(tmp_path, override, key):
    code, _, err = run_script("image_train.py", *B, override, f"out_dir={tmp_path}")
    one_error(code, err, key, "the command line")
    assert os.listdir(tmp_path) == []


def test_negative_count_in_a_method_section_and_a_yaml_file(tmp_path):
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/buffer_replay.yaml", "method.buffer_size=-3",
                              f"out_dir={tmp_path}")
    one_error(code, err, "method.buffer_size must be >= 0")
    cfg = tmp_path / "neg.yaml"
    cfg.write_text("base: %s/yaml/mnist/naive.yaml\ncontinual:\n  num_steps: -5\n" % ROOT)
    code, _, err = run_script("image_train.py", "--config", cfg, f"out_dir={tmp_path}")
    one_error(code, err, f"{cfg}: continual.num_steps must be >= 0")


def test_image_sample_refuses_negative_num_samples(tmp_path):
    code, _, err = run_script("image_sample.py", "--num_samples", "-3", f"sample.out_dir={tmp_path}")
    one_error(code, err, "sample.num_samples must be >= 0")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- messages (item 10)


def test_override_typo_is_blamed_on_the_command_line_not_the_yaml(tmp_path):
    code, _, err = run_script("image_train.py", *B, "train.lrr=3", f"out_dir={tmp_path}")
    line = one_error(code, err, "the command line: unknown key 'train.lrr'", "did you mean 'lr'")
    assert "naive.yaml" not in line
