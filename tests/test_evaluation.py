"""Evaluation: float64 statistics, Fréchet distance, IS, precision/recall, KLD/ARD, accuracy summaries,
feature extractors, the domain classifier files, the continual hook and the reports."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation import (
    DomainClassifier,
    DomainFeatures,
    FeatureStats,
    ImageSet,
    accuracy_matrix,
    ard,
    average_accuracy,
    class_histogram,
    evaluate_sets,
    extract_features,
    feature_statistics,
    fid_from_features,
    forgetting,
    format_table,
    frechet_distance,
    inception_score,
    kld,
    load_domain_classifier,
    load_reference_stats,
    manifold_radii,
    per_class_accuracy,
    precision_recall,
    resize_bilinear_tf1,
    save_domain_classifier,
)
from guided_diffusion.runtime.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extractor(seed=0, size=8, feature_dim=16):
    torch.manual_seed(seed)
    model = DomainClassifier(1, size, 10, width=4, feature_dim=feature_dim).eval()
    return DomainFeatures(model, {"dataset": "toy", "split": "train", "version": 1, "test_accuracy": 0.1})


def _images(n, seed=0, size=8, classes=10):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = rng.integers(0, 256, (classes, size, size, 1))
    noise = rng.integers(-40, 41, (n, size, size, 1))
    return np.clip(base[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


# ------------------------------------------------------------------ statistics and Fréchet distance


def test_float64_statistics_match_numpy_in_batches():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((1000, 12)) * np.linspace(0.1, 3, 12)).astype(np.float32)
    s = FeatureStats()
    for i in range(0, 1000, 77):  # uneven batches
        s.update(x[i : i + 77])
    ref = x.astype(np.float64)
    assert s.mu.dtype == np.float64 and s.sigma.dtype == np.float64
    np.testing.assert_allclose(s.mu, ref.mean(0), rtol=1e-13)
    np.testing.assert_allclose(s.sigma, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-12)
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_closed_form_diagonal(method):
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_same_covariance_and_singular():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((5, 5))
    s = m @ m.T
    assert frechet_distance(np.zeros(5), s, np.ones(5), s) == pytest.approx(5.0, abs=1e-7)
    low = rng.standard_normal((5, 2))
    sing = low @ low.T  # rank 2
    for method in ("sqrtm", "eigh"):
        assert abs(frechet_distance(np.zeros(5), sing, np.zeros(5), sing, method=method)) < 1e-5


def test_fid_of_a_set_with_itself_and_a_shifted_set():
    ext = _extractor()
    x, y = _images(200)
    f = extract_features(ext, x, batch_size=64)["pool"]
    assert f.shape == (200, 16)
    spread = np.trace(np.cov(f.astype(np.float64), rowvar=False))  # random-init features are small
    assert abs(fid_from_features(f, f)) < 1e-9 * spread
    shifted = np.clip(x.astype(int) + 60, 0, 255).astype(np.uint8)
    g = extract_features(ext, shifted, batch_size=64)["pool"]
    assert fid_from_features(f, g) > 0.5 * spread
    # batch size does not change the features
    np.testing.assert_allclose(extract_features(ext, x, batch_size=7)["pool"], f, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ IS, precision/recall, class metrics


def test_inception_score_bounds():
    assert inception_score(np.zeros((100, 7)))[0] == pytest.approx(1.0)
    confident = np.full((100, 4), -50.0)
    confident[np.arange(100), np.arange(100) % 4] = 50.0
    assert inception_score(confident)[0] == pytest.approx(4.0, rel=1e-6)


def test_precision_recall_toy():
    grid = np.array([(x, y) for y in range(4) for x in range(4)], np.float64)  # 4x4 grid, spacing 1
    r = manifold_radii(grid, k=3)
    assert r[0] == 2.0 and r[5] == 1.0  # squared: corner 3rd neighbour at sqrt(2), inner at 1
    samples = np.concatenate([grid[:8], grid[8:] + 1000.0])  # rows y=0,1 exact, the rest far away
    p, rc = precision_recall(grid, samples, k=3)
    assert p == pytest.approx(0.5)  # 8 of 16 samples on the reference manifold
    assert rc == pytest.approx(0.75)  # rows y=0,1,2 are within the sample balls; y=3 is not
    assert precision_recall(grid, grid) == (1.0, 1.0)


def test_kld_ard_known_histograms():
    t = np.array([0.5, 0.5, 0.0, 0.0])
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert ard(t, p) == pytest.approx(0.5)
    expected = sum((a + 1e-8) * np.log((a + 1e-8) / (b + 1e-8)) for a, b in zip(t, p))
    assert kld(t, p) == pytest.approx(expected, rel=1e-12)
    assert kld(t, p) == pytest.approx(np.log(2), abs=1e-6)
    # Masip: KLDivLoss(batchmean) on (1, C) tensors of log(pred + 1e-8) and true + 1e-8
    masip = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log(torch.tensor(p + 1e-8))[None], torch.tensor(t + 1e-8)[None])
    assert kld(t, p) == pytest.approx(masip.item(), rel=1e-9)
    assert kld(t, t) == pytest.approx(0.0, abs=1e-12) and ard(t, t) == 0.0
    h = class_histogram([0, 0, 1, 3], 4)
    np.testing.assert_allclose(h, [0.5, 0.25, 0.0, 0.25])
    assert kld([0.5, 0.5], [1.0, 0.0]) > 8  # a missing class costs ~0.5 * log(0.5 / 1e-8)


def test_accuracy_summaries():
    acc = per_class_accuracy([0, 1, 1, 2, 2, 0], [0, 1, 0, 2, 2, 2])
    assert acc == {0: 0.5, 1: 1.0, 2: 2 / 3}
    r = np.array([[0.9, np.nan, np.nan], [0.6, 0.8, np.nan], [0.5, 0.7, 0.95]])
    assert average_accuracy(r) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert average_accuracy(r, after_task=1) == pytest.approx(0.7)
    assert forgetting(r) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert forgetting(r, after_task=0) == 0.0
    m = accuracy_matrix([{0: 0.9}, {0: 0.6, 1: 0.8}])
    assert m.shape == (2, 2) and np.isnan(m[0, 1]) and m[1, 1] == 0.8
    # CLoG (Zhang et al. 2024): AIQ = mean over rows i of mean(r[i, :i+1]); AFQ = mean of the last row;
    # FR = forgetting. For FID (lower is better) the same with the drop measured upward.
    from guided_diffusion.evaluation.class_metrics import clog_metrics

    c = clog_metrics(r)
    assert c["aiq"] == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.95) / 3) / 3)
    assert c["afq"] == pytest.approx((0.5 + 0.7 + 0.95) / 3) and c["fr"] == pytest.approx(forgetting(r))
    fid = np.array([[20.0, np.nan, np.nan], [30.0, 25.0, np.nan], [50.0, 24.0, 22.0]])
    f = clog_metrics(fid, higher_is_better=False)
    assert f["afq"] == pytest.approx(32.0) and f["aiq"] == pytest.approx((20 + 27.5 + 32) / 3)
    # task 0: best before the last 20, last 50 (+30); task 1: best 25, last 24 (-1): mean 14.5
    assert f["fr"] == pytest.approx(14.5)


# ------------------------------------------------------------------ extractors and files


def test_tf1_bilinear_resize_matches_formula():
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4) ** 1.5
    out = resize_bilinear_tf1(x, 7)
    ref = np.zeros((7, 7))
    a = x[0, 0].numpy().astype(np.float64)
    for i in range(7):
        for j in range(7):
            sy, sx = i * 3 / 7, j * 4 / 7
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 3)
            wy, wx = sy - y0, sx - x0
            top = a[y0, x0] + (a[y0, x1] - a[y0, x0]) * wx
            bot = a[y1, x0] + (a[y1, x1] - a[y1, x0]) * wx
            ref[i, j] = top + (bot - top) * wy
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=1e-5)


def test_inception_weights_missing_gives_clear_error(tmp_path, monkeypatch):
    from guided_diffusion.evaluation import build_feature_extractor

    monkeypatch.delenv("GD_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        build_feature_extractor("inception")
    monkeypatch.setenv("GD_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth.*Nothing is downloaded"):
        build_feature_extractor("inception")


def test_inception_output_shapes_random_init():
    from guided_diffusion.evaluation import InceptionFeatures, TFInceptionV3

    ext = InceptionFeatures(TFInceptionV3().eval())
    with torch.no_grad():
        out = ext(ext.to_input(np.zeros((1, 28, 28, 1), np.uint8)))
    assert out["pool"].shape == (1, 2048) and out["logits"].shape == (1, 1008) and out["spatial"].shape == (1, 2023)
    assert "NOT the released weights" in ext.describe()
    assert len(TFInceptionV3().state_dict()) == 566  # 94 conv+bn blocks x 6 tensors + fc weight/bias


def test_domain_classifier_round_trip(tmp_path):
    x, y = _images(60, size=8)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    from guided_diffusion.evaluation import train_domain_classifier

    model, report = train_domain_classifier(xt, torch.from_numpy(y), xt[:20], torch.from_numpy(y[:20]), 10,
                                            epochs=1, batch_size=16, width=4, feature_dim=8)
    path = str(tmp_path / "clf.safetensors")
    save_domain_classifier(model, path, {"dataset": "toy", "split": "train", "test_accuracy": report["test_accuracy"]})
    with open(tmp_path / "clf.json") as f:
        meta = json.load(f)
    assert meta["kind"] == "domain_classifier" and meta["version"] == 1 and meta["dataset"] == "toy"
    assert meta["arch"]["feature_dim"] == 8 and "test_accuracy" in meta
    loaded, meta2 = load_domain_classifier(path)
    with torch.no_grad():
        a, b = model.features(xt[:5]), loaded.features(xt[:5])
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(FileNotFoundError, match="train_eval_classifier.py"):
        load_domain_classifier(str(tmp_path / "missing.safetensors"))


def test_evaluate_sets_rows_protocol_and_reference_cache(tmp_path):
    ext = _extractor()
    x, y = _images(120)
    ref = ImageSet(x[:60], y[:60], 10, "toy ref")
    samples = ImageSet(x[60:], y[60:], 10, "toy samples")
    cache = str(tmp_path / "ref_stats.npz")
    rows = evaluate_sets(ext, samples, ref, batch_size=32, ref_cache=cache)
    names = [r.name for r in rows]
    for m in ("fid", "is", "precision", "recall", "kld", "ard", "class_acc", "acc_class_0"):
        assert m in names
    assert "sfid" not in names  # the domain features have no spatial map
    fid = next(r for r in rows if r.name == "fid")
    assert "60 samples" in fid.protocol and "toy ref" in fid.protocol and "domain-cnn" in fid.protocol
    stats = load_reference_stats(cache)
    assert stats["n"] == 60 and stats["extractor"] == ext.name and len(stats["source_sha256"]) == 64
    again = evaluate_sets(ext, samples, stats, ["fid"], batch_size=32)  # from the statistics file
    assert again[0].value == pytest.approx(fid.value, rel=1e-9)
    assert "fid" in format_table(rows)



def test_a_registered_metric_is_computed_by_evaluate_sets():
    """A new metric is one registered function: evaluate_sets computes it where its needs are met,
    after the built-in ones, and skips it where they are not."""
    from guided_diffusion.evaluation import METRICS, MetricInputs, register_metric
    from guided_diffusion.evaluation.metrics import MetricRow

    @register_metric("mean_pool_gap", needs=("reference_features", "sample_labels"))
    def mean_pool_gap(x: MetricInputs):
        gap = float(np.abs(x.feats["pool"].mean(0) - x.ref_feats["pool"].mean(0)).max())
        return [MetricRow("mean_pool_gap", gap, f"max |mean pool difference|, {x.base}", "max |mean difference|")]

    try:
        ext = _extractor()
        x, y = _images(120)
        ref = ImageSet(x[:60], y[:60], 10, "toy ref")
        samples = ImageSet(x[60:], y[60:], 10, "toy samples")
        rows = evaluate_sets(ext, samples, ref, ["mean_pool_gap", "fid"], batch_size=32)
        assert [r.name for r in rows] == ["fid", "mean_pool_gap"]  # the registry's order
        want = np.abs(extract_features(ext, samples.images, 32)["pool"].mean(0)
                      - extract_features(ext, ref.images, 32)["pool"].mean(0)).max()
        assert rows[1].value == pytest.approx(float(want)) and "60 samples" in rows[1].protocol
        assert "mean_pool_gap" in [r.name for r in evaluate_sets(ext, samples, ref, batch_size=32)]  # default: all
        unlabelled = ImageSet(x[60:], None, 10, "toy samples")
        assert evaluate_sets(ext, unlabelled, ref, ["mean_pool_gap"], batch_size=32) == []  # its needs unmet
        with pytest.raises(ValueError, match="unknown need"):
            register_metric("bad", needs=("labels",))
        with pytest.raises(ValueError, match="unknown metric"):
            evaluate_sets(ext, samples, ref, ["mean_pool_gaps"], batch_size=32)
    finally:
        METRICS.pop("mean_pool_gap", None)

# ------------------------------------------------------------------ config, continual hook, report


def test_evaluation_section_schema():
    import guided_diffusion.continual.methods  # noqa: F401  (the eval YAML's method section)

    cfg = load_config(None, ["evaluation.enabled=true", "evaluation.num_samples=10"])
    assert cfg.evaluation.enabled and cfg.evaluation.num_samples == 10
    with pytest.raises(ConfigError, match="evaluation.features"):
        load_config(None, ["evaluation.features=clip"])
    with pytest.raises(ConfigError, match="num_smaples"):
        load_config(None, ["evaluation.num_smaples=3"])
    with pytest.raises(ConfigError, match="metrics"):
        load_config(None, ["evaluation.metrics=fid,fidd"])
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/generative_distillation_eval.yaml"))
    assert cfg.evaluation.enabled


def test_continual_run_with_evaluation(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.continual.loop import run_continual

    torch.manual_seed(0)
    clf = DomainClassifier(1, 28, 10, width=4, feature_dim=8)
    clf_path = str(tmp_path / "clf.safetensors")
    save_domain_classifier(clf, clf_path, {"dataset": "mnist5k", "split": "train", "test_accuracy": 0.1})
    tiny = [
        "data.dataset=mnist5k", "model.num_channels=32", "model.num_head_channels=32", "model.num_res_blocks=1",
        "model.channel_mult=1,2",
        "model.attention_resolutions=14", "model.class_cond=true", "diffusion.diffusion_steps=50",
        "train.batch_size=8", "train.num_threads=1", "train.ema_rate=0.9", "continual.num_tasks=5",
        "continual.classes_per_task=2", "continual.limit_tasks=2", "continual.num_steps=2",
        "continual.first_task_num_steps=2", "continual.grid_per_class=1", "continual.eval_sampler=ddim2",
        "evaluation.enabled=true", "evaluation.num_samples=12", "evaluation.batch_size=6",
        f"evaluation.classifier_path={clf_path}", "evaluation.train_classifier=false", f"out_dir={tmp_path}",
        "name=ev",
    ]
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), tiny)
    ctx = run_continual(cfg)
    with open(f"{ctx.run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["0", "1"]
    for col in ("eval_fid", "eval_kld", "eval_ard", "eval_class_acc", "eval_precision", "eval_recall",
                "eval_acc_task_0", "eval_fid_real", "eval_protocol", "eval_fid_task_0", "eval_fid_task_1"):
        assert rows[1][col] != "", col
    assert "eval_acc_task_1" in rows[1] and rows[0].get("eval_acc_task_1", "") == ""
    assert int(rows[1]["eval_samples"]) == 12 and int(rows[1]["eval_ref_images"]) == 200
    assert "12" in rows[1]["eval_protocol"] and "classes 0 1 2 3" in rows[1]["eval_protocol"]

    from guided_diffusion.evaluation.report import build_report

    md, page = build_report(ctx.run_dir)
    assert "eval_fid" in open(md).read() and os.path.exists(os.path.join(ctx.run_dir, "report_plots", "eval_fid.png"))

    # A run seeded with this run's task 0 (continual.init_from) takes its grid and evaluation as they
    # are; with other evaluation settings it computes its own.
    seeded = run_continual(load_config(os.path.join(ROOT, "yaml/mnist/ewc.yaml"), tiny[:-1] + [
        "name=seeded", "continual.limit_tasks=1", "method.num_samples=4", f"continual.init_from={ctx.run_dir}"]))
    with open(f"{seeded.run_dir}/metrics.csv") as f:
        mine = list(csv.DictReader(f))[0]
    evals = lambda r: {k: v for k, v in r.items() if k.startswith("eval_") and k != "eval_sec" and v}  # noqa: E731
    assert len(evals(rows[0])) > 8 and evals(mine) == evals(rows[0])
    assert mine["eval_sec"] == "0.0" and float(rows[0]["eval_sec"]) > 0
    with open(f"{seeded.run_dir}/task_0/samples.png", "rb") as f, open(f"{ctx.run_dir}/task_0/samples.png", "rb") as g:
        assert f.read() == g.read()
    assert "grid and evaluation taken from" in open(f"{seeded.run_dir}/log.txt").read()
    other = run_continual(load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), tiny[:-1] + [
        "name=other", "continual.limit_tasks=1", "evaluation.num_samples=6", f"continual.init_from={ctx.run_dir}"]))
    with open(f"{other.run_dir}/metrics.csv") as f:
        theirs = list(csv.DictReader(f))[0]
    assert theirs["eval_samples"] == "6" and float(theirs["eval_sec"]) > 0
    assert "grid and evaluation taken from" not in open(f"{other.run_dir}/log.txt").read()


def test_report_from_fake_runs(tmp_path):
    from PIL import Image

    from guided_diffusion.evaluation.report import build_report

    for name, fid in (("run_a", [10.0, 14.0]), ("run_b", [9.0, 20.0])):
        run = tmp_path / name
        (run / "task_0").mkdir(parents=True)
        (run / "task_1").mkdir()
        Image.new("L", (20, 10), 128).save(run / "task_0" / "samples.png")
        with open(run / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["task", "classes", "steps", "sec_per_step", "train_sec", "final_loss", "eval_fid",
                                   "eval_acc_task_0", "eval_acc_task_1", "eval_protocol"])
            w.writeheader()
            w.writerow(dict(task=0, classes="0 1", steps=5, sec_per_step=0.1, train_sec=0.5, final_loss=0.3,
                            eval_fid=fid[0], eval_acc_task_0=0.9, eval_protocol="toy protocol"))
            if name == "run_a":
                w.writerow(dict(task=1, classes="2 3", steps=5, sec_per_step=0.12, train_sec=0.6, final_loss=0.25,
                                eval_fid=fid[1], eval_acc_task_0=0.7, eval_acc_task_1=0.8, eval_protocol="toy protocol"))
        (run / "config.yaml").write_text("method:\n  name: generative_distillation\n  source: full_generation\n")
    (tmp_path / "run_b" / "task_1" / "progress.csv").write_text("step,loss\n1,0.5\n3,0.4\n")
    md, page = build_report(str(tmp_path))
    text, html_text = open(md).read(), open(page).read()
    assert "| method |" in text and "generative_distillation:full_generation (run_a)" in text
    assert "run_a/task_0/samples.png" in text and "src='run_a/task_0/samples.png'" in html_text
    assert "<table>" in html_text and "toy protocol" in html_text
    assert "task 1 in progress at step 3" in text  # the partial run
    assert "report_plots/eval_fid.png" in text and (tmp_path / "report_plots" / "eval_fid.png").exists()
    # accuracy matrix of run_a: avg acc (0.7 + 0.8) / 2, forgetting 0.9 - 0.7
    row_a = next(line for line in text.splitlines() if line.startswith("| generative_distillation:full_generation (run_a)"))
    assert "| 0.75 |" in row_a and "| 0.2 |" in row_a
    md1, _ = build_report(str(tmp_path / "run_a"))  # a single run folder works too
    assert os.path.dirname(md1) == str(tmp_path / "run_a")


def test_report_of_unevaluated_run_drops_empty_columns(tmp_path):
    from guided_diffusion.evaluation.report import build_report

    run = tmp_path / "demo"
    run.mkdir()
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["task", "classes", "steps", "sec_per_step", "train_sec", "final_loss"])
        w.writeheader()
        w.writerow(dict(task=0, classes="0 1", steps=5, sec_per_step=0.25, train_sec=1.25, final_loss=0.3))
    md, _ = build_report(str(run))
    text = open(md).read()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header == "| method | tasks done | sec/step | train s |"
    assert "No run was evaluated" in text


def test_reference_batch_statistics_give_fid_and_images_the_rest():
    """ADM's reference batches: FID against the stored mu/sigma, precision/recall from arr_0."""
    ext = _extractor()
    x, y = _images(180)
    ref = ImageSet(x[:60], y[:60], 10, "toy ref")
    other = ImageSet(x[120:], y[120:], 10, "other")
    samples = ImageSet(x[60:120], y[60:120], 10, "toy samples")
    plain = {r.name: r.value for r in evaluate_sets(ext, samples, ref, batch_size=32)}
    mu, sigma = feature_statistics(extract_features(ext, other.images, 32)["pool"])
    stats = {"mu": mu, "sigma": sigma, "extractor": ""}
    mixed = {r.name: r.value for r in evaluate_sets(ext, samples, ref, batch_size=32, reference_stats=stats)}
    vs_other = {r.name: r.value for r in evaluate_sets(ext, samples, other, ["fid"], batch_size=32)}
    assert mixed["fid"] == pytest.approx(vs_other["fid"], rel=1e-9) and mixed["fid"] != pytest.approx(plain["fid"])
    assert mixed["precision"] == plain["precision"] and mixed["recall"] == plain["recall"]
    with pytest.raises(ValueError, match="computed with 'other'"):
        evaluate_sets(ext, samples, ref, ["fid"], batch_size=32, reference_stats=dict(stats, extractor="other"))


def _evaluate_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_cli", os.path.join(ROOT, "scripts", "evaluate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evaluate_script_takes_adm_order_and_refuses_swapped_inputs(tmp_path):
    cli = _evaluate_cli()
    x, y = _images(40)
    ref, smp, stats = str(tmp_path / "ref_batch.npz"), str(tmp_path / "samples_40x8x8x1.npz"), str(tmp_path / "s.npz")
    np.savez(ref, arr_0=x[:20], arr_1=y[:20])
    np.savez(smp, arr_0=x[20:], arr_1=y[20:])
    np.savez(stats, mu=np.zeros(4), sigma=np.eye(4))
    a = cli.parse_args([ref, smp])  # ADM: evaluator.py REF_BATCH SAMPLE_BATCH
    assert (a.reference, a.samples) == (ref, smp)
    a = cli.parse_args(["--samples", smp, "--ref", ref])
    assert (a.reference, a.samples) == (ref, smp)
    a = cli.parse_args(["--ref", smp, "--samples", "mnist5k"])  # named: nothing is guessed
    assert (a.reference, a.samples) == (smp, "mnist5k")
    for swapped, why in (([smp, ref], "named like image_sample.py's samples"),
                         ([ref, stats], "holds only statistics"),
                         ([ref, "mnist5k"], "is a real data set")):
        with pytest.raises(ConfigError, match=why):
            cli.parse_args(swapped)
    for bad in ([ref], [ref, "--samples", smp], ["--ref", ref]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
    assert cli.swapped_inputs("mnist5k", "mnist5k") == ""  # real vs real


def test_the_grid_takes_the_samples_an_evaluation_hands_back():
    """The loop's grid reuses the samples an evaluator returned beside its columns (the first
    grid_per_class of each seen class) only when they were drawn with the grid's sampler and hold
    enough of every class; otherwise it samples its own (None)."""
    from types import SimpleNamespace

    from guided_diffusion.continual.loop import _grid_from_evaluation
    from guided_diffusion.evaluation.continual import DrawnSamples

    cfg = load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"),
                      ["continual.grid_per_class=2", "continual.eval_sampler=ddim2"])
    ctx, task = SimpleNamespace(cfg=cfg), SimpleNamespace(seen_classes=[0, 1])
    images = np.arange(6).reshape(6, 1, 1, 1).astype(np.uint8)
    labels = np.array([1, 0, 1, 0, 0, 1])
    got = _grid_from_evaluation(ctx, task, [None, DrawnSamples(images, labels, "ddim2", 0.0)])
    assert got[:, 0, 0, 0].tolist() == [1, 3, 0, 2]  # class 0's first two, then class 1's
    assert _grid_from_evaluation(ctx, task, [DrawnSamples(images, labels, "ddim4", 0.0)]) is None  # other sampler
    assert _grid_from_evaluation(ctx, task, [DrawnSamples(images, labels, "ddim2", 0.5)]) is None  # other eta
    assert _grid_from_evaluation(ctx, task, [DrawnSamples(images[:3], labels[:3], "ddim2", 0.0)]) is None  # too few


def test_building_an_evaluator_reads_and_trains_nothing(tmp_path, tiny_eval_classifier, monkeypatch):
    """The classifier is asked for first and explicitly (``evaluation_classifier``: loaded, or trained only
    where the file is missing and evaluation.train_classifier allows it); the evaluator takes it."""
    import guided_diffusion.evaluation.continual as ec

    trained = []
    monkeypatch.setattr(ec, "train_classifier_from_config", lambda cfg, path, log=print: trained.append(path))
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), tiny_eval_classifier)
    clf = ec.evaluation_classifier(cfg)
    assert clf.meta["dataset"] == "mnist5k" and trained == []
    assert ec.ContinualEvaluator(cfg, clf).features is clf
    with pytest.raises(ValueError, match="evaluation_classifier"):
        ec.ContinualEvaluator(cfg, None)  # a domain evaluation without its classifier
    missing = str(tmp_path / "none.safetensors")
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), [f"evaluation.classifier_path={missing}",
                                                                   "evaluation.train_classifier=false"])
    with pytest.raises(FileNotFoundError, match="train_eval_classifier.py"):
        ec.evaluation_classifier(cfg)
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), [f"evaluation.classifier_path={missing}"])
    with pytest.raises(Exception):  # trained (here: recorded), then loaded: the stub wrote no file
        ec.evaluation_classifier(cfg)
    assert trained == [missing]
