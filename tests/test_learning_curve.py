"""The learning-curve tool: points, plateau rule, a tiny curve that resumes bit-identically."""

import csv
import os

import pytest
import torch
from tools import curves as lc

from guided_diffusion.evaluation.domain_classifier import (
    DomainClassifier,
    save_domain_classifier,
)
from guided_diffusion.runtime.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_points_parse_and_double():
    assert lc.parse_points("8k, 4k,16000,4000") == [4000, 8000, 16000]
    assert lc.parse_points("1.5k,2m") == [1500, 2_000_000]
    assert lc.doubling_points(4000, 40000) == [4000, 8000, 16000, 32000]
    with pytest.raises(ValueError, match="not a number"):
        lc.parse_points("4k,lots")
    with pytest.raises(ValueError, match="> 0"):
        lc.parse_points("0")


def test_plateau_is_the_first_doubling_that_gains_less_than_ten_percent():
    rows = [{"images": n, "eval_fid": f} for n, f in ((1000, 200.0), (2000, 100.0), (4000, 60.0), (8000, 55.0),
                                                      (16000, 54.0))]
    # 200 -> 100 (-50%), 100 -> 60 (-40%), 60 -> 55 (-8.3%: < 10%): the plateau is at 4000.
    assert lc.plateau(rows) == 4000
    assert lc.plateau(rows[:3]) is None  # no doubling of 4000 measured
    # A stall (16k -> 32k) followed by a drop is not a plateau: the last doubling still gains.
    stall = [{"images": n, "eval_fid": f} for n, f in ((8000, 681.0), (16000, 537.0), (32000, 522.0),
                                                       (64000, 153.0))]
    assert lc.plateau(stall) is None
    assert lc.plateau(stall + [{"images": 128000, "eval_fid": 150.0}]) == 64000
    # At the real-data floor a further drop is the estimate's noise: flat from there.
    floor = [{"images": n, "eval_fid": f, "eval_fid_real": 16.7} for n, f in ((8000, 27.0), (16000, 20.5),
                                                                             (32000, 17.5), (64000, 14.4))]
    assert lc.plateau(floor) == 32000  # 17.5 <= 1.1 x 16.7; the doublings before gain > 10%
    assert lc.plateau(floor, floor_key=None) is None
    # The last point counts when it reaches the floor (no doubling of it measured): 28 px, 10 classes.
    last = [{"images": n, "eval_fid": f, "eval_fid_real": 34.5} for n, f in ((32000, 76.1), (64000, 42.1),
                                                                            (128000, 34.9))]
    assert lc.plateau(last) == 128000
    assert lc.plateau(last[:2]) is None  # 76 -> 42 still gains; 42 > 1.1 x 34.5
    acc = [{"images": 1000, "eval_class_acc": 0.5}, {"images": 2000, "eval_class_acc": 0.9},
           {"images": 4000, "eval_class_acc": 0.905}]
    # errors 0.5 -> 0.1 (-80%), 0.1 -> 0.095 (-5%): plateau at 2000.
    assert lc.plateau(acc, "eval_class_acc", lower_is_better=False) == 2000


def _tiny(tmp_path, clf_path):
    return [
        "data.dataset=digits", "data.image_size=8", "model.num_channels=16", "model.num_head_channels=16", "model.norm_groups=8",
        "model.num_res_blocks=1", "model.channel_mult=1,2", "model.attention_resolutions=4", "model.class_cond=true",
        "diffusion.diffusion_steps=40", "train.batch_size=8", "train.num_threads=1", "train.ema_rate=0.9",
        "train.lr_schedule=constant", "train.warmup_steps=0", "train.log_interval=2", "continual.eval_sampler=4",
        "evaluation.num_samples=12", "evaluation.batch_size=6", "evaluation.sampler=4", "evaluation.metrics=fid,class_acc",
        f"evaluation.classifier_path={clf_path}", "evaluation.train_classifier=false", f"out_dir={tmp_path}",
    ]


def test_curve_rows_and_resume_bit_identical(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.runtime import checkpoint as ckpt

    torch.manual_seed(0)
    clf = DomainClassifier(1, 8, 10, width=4, feature_dim=8)
    clf_path = str(tmp_path / "clf.safetensors")
    save_domain_classifier(clf, clf_path, {"dataset": "digits", "split": "train", "test_accuracy": 0.1})
    cfg = load_config(None, _tiny(tmp_path, clf_path))
    # One run to 48 images (6 steps) in one go ...
    a = str(tmp_path / "a")
    rows = lc.run_curve(cfg, [0, 1], [16, 48], a, grid_per_class=2)
    assert [r["images"] for r in rows] == [16, 48] and [r["steps"] for r in rows] == [2, 6]
    for r in rows:
        assert r["eval_fid"] > 0 and 0 <= r["eval_class_acc"] <= 1 and r["eval_samples"] == 12
        assert r["sec_per_image"] > 0 and r["train_sec"] > 0
    assert os.path.isfile(f"{a}/curve.png") and os.path.isfile(f"{a}/grid_00000016.png")
    # ... and one stopped after its first point, then rerun with both: it resumes at step 2.
    b = str(tmp_path / "b")
    lc.run_curve(cfg, [0, 1], [16], b, grid_per_class=0)
    first = lc.read_curve(b)
    lc.run_curve(cfg, [0, 1], [16, 48], b, grid_per_class=0)
    again = lc.read_curve(b)
    assert again[0] == first[0] and [r["images"] for r in again] == ["16", "48"]
    with open(f"{b}/log.txt") as f:
        assert "resumed from step 2" in f.read()
    wa = ckpt.load_torch(f"{a}/model000006.pt")
    wb = ckpt.load_torch(f"{b}/model000006.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert float(again[1]["eval_fid"]) == pytest.approx(rows[1]["eval_fid"], rel=1e-6)
    # A rerun with nothing left to do trains nothing and keeps the rows.
    lc.run_curve(cfg, [0, 1], [16, 48], b, grid_per_class=0)
    assert lc.read_curve(b) == again
    with open(f"{b}/curve.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # Points added later: one past the run is trained on; one before where it stands cannot be (skipped).
    rows = lc.run_curve(cfg, [0, 1], [8, 16, 48, 64], b, grid_per_class=0)
    assert [r["images"] for r in rows][-1] == 64 and 8 not in [int(float(r["images"])) for r in rows]
    with open(f"{b}/log.txt") as f:
        assert "point 8 images (step 1) lies before the run's step 6: skipped" in f.read()
    table = lc.curve_table([a, b])
    assert "| a | 16 | 2 |" in table and "FID plateau" in table
