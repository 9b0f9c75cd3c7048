"""Config: strict keys with suggestions, type coercion, overrides, cross-key validation."""

import glob
import os

import pytest

import yaml
from guided_diffusion.runtime.config import (
    Config,
    ConfigError,
    dump_config,
    load_config,
    parse_list,
)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_and_yaml_values(tmp_path):
    path = write(tmp_path, "name: a\ntrain:\n  lr: 3e-4\n  total_steps: 7\nmodel:\n  class_cond: true\n")
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == "a" and cfg.train.lr == 3e-4 and cfg.train.total_steps == 7
    assert cfg.model.class_cond is True
    assert cfg.train.batch_size == Config().train.batch_size


def test_overrides_coerce_types(tmp_path):
    path = write(tmp_path, "name: a\n")
    cfg = load_config(path, ["train.lr=0.001", "train.total_steps=12", "model.class_cond=false",
                             "model.attention_resolutions=[16, 8]", "name=b"])
    assert cfg.train.lr == 0.001 and cfg.train.total_steps == 12 and cfg.model.class_cond is False
    assert cfg.model.attention_resolutions == "16,8"
    assert cfg.name == "b"


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n  totl_steps: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert path in msg and "train.learning_rate" in msg


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, "train:\n  totl_steps: 3\n")
    with pytest.raises(ConfigError, match=r"train\.totl_steps.*did you mean 'total_steps'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(None, ["modle.dropout=0.1"])


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.total_steps: expected an integer"):
        load_config(None, ["train.total_steps=abc"])
    with pytest.raises(ConfigError, match=r"model\.class_cond: expected true/false"):
        load_config(None, ["model.class_cond=maybe"])
    with pytest.raises(ConfigError, match=r"train\.total_steps: expected an integer"):
        load_config(None, ["train.total_steps=1.5"])


def test_impossible_values():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="train.batch_size must be > 0"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match="embedding_kind is 'none'"):
        load_config(None, ["model.class_cond=true", "model.embedding_kind=none"])
    with pytest.raises(ConfigError, match="ema_rate"):
        load_config(None, ["train.ema_rate=0.9,1.5"])
    with pytest.raises(ConfigError, match="train.loss_weighting = 'min_snrr' is not one of none, min_snr"):
        load_config(None, ["train.loss_weighting=min_snrr"])
    with pytest.raises(ConfigError, match="train.min_snr_gamma must be > 0"):
        load_config(None, ["train.min_snr_gamma=0"])
    with pytest.raises(ConfigError, match=r"model.norm_groups = 8 does not divide the UNet's widths \[36\]"):
        load_config(None, ["model.norm_groups=8", "model.num_channels=36", "model.channel_mult=1,2"])
    assert load_config(None, ["model.norm_groups=8", "model.num_channels=32", "model.channel_mult=1,2,2"])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=0.5", "name=x"])
    path = write(tmp_path, dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["train"]["lr"] == 0.5


def test_parse_list():
    assert parse_list("16,8") == (16, 8)
    assert parse_list("0.5,1", float) == (0.5, 1.0)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHIPPED = sorted(
    os.path.relpath(p, _ROOT)
    for p in glob.glob(os.path.join(_ROOT, "yaml", "**", "*.yaml"), recursive=True)
    if os.sep + "bench" + os.sep not in p  # suite files of scripts/benchmark_cl.py have their own schema
)


def test_every_method_preset_exists_for_each_benchmark():
    names = lambda d: {os.path.basename(p) for p in _SHIPPED if p.startswith(os.path.join("yaml", d) + os.sep)}
    assert names("mnist") >= names("fmnist") == names("cifar10_5") and len(names("fmnist")) >= 11


def _bases():
    out = set()
    for path in _SHIPPED:
        with open(os.path.join(_ROOT, path)) as f:
            b = (yaml.safe_load(f) or {}).get("base") or []
        for name in [b] if isinstance(b, str) else b:
            out.add(os.path.normpath(os.path.join(os.path.dirname(path), name)))
    return out


_BASES = _bases()


@pytest.mark.parametrize("path", _SHIPPED)
def test_shipped_yaml_files_validate(path):
    from guided_diffusion.launch.cli import _register_section_schemas

    _register_section_schemas()  # the method, evaluation and dkdm sections

    cfg = load_config(os.path.join(_ROOT, path))
    if path not in _BASES:  # common.yaml / split.yaml: the presets' shared parts, not runs
        assert cfg.name and cfg.name != "run", f"{path} should name its run folder"


def test_presets_inherit_and_an_error_names_the_file(tmp_path):
    """``base:`` (a path or a list, relative to the file; later ones win, the file last)."""
    assert {"yaml/mnist/common.yaml", "yaml/mnist/split.yaml"} <= _BASES
    ewc = load_config(os.path.join(_ROOT, "yaml/mnist/ewc.yaml"))
    assert (ewc.model.num_channels, ewc.model.norm_groups, ewc.continual.scenario) == (32, 8, "split_mnist")
    (tmp_path / "a.yaml").write_text("model: {num_channels: 48, dropout: 0.1}\ntrain: {lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("model: {num_channels: 64}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("base: [../a.yaml, ../b.yaml]\nname: c\ntrain: {lr: 0.25}\n")
    c = load_config(str(tmp_path / "sub" / "c.yaml"))
    assert (c.model.num_channels, c.model.dropout, c.train.lr, c.name) == (64, 0.1, 0.25, "c")
    (tmp_path / "b.yaml").write_text("model: {num_chanels: 64}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: .*num_chanels"):
        load_config(str(tmp_path / "sub" / "c.yaml"))
    (tmp_path / "b.yaml").write_text("base: sub/c.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(tmp_path / "sub" / "c.yaml"))
    (tmp_path / "b.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml .base of"):
        load_config(str(tmp_path / "sub" / "c.yaml"))


def test_use_ddim_follows_adm_unless_set(tmp_path):
    """ADM: --timestep_respacing 250 is 250 ancestral steps; DDIM only when asked or named (ddimN)."""
    import guided_diffusion.continual.methods  # noqa: F401  (method schemas)
    import guided_diffusion.evaluation  # noqa: F401  (evaluation schema)
    from guided_diffusion.sampling.config import resolve_use_ddim

    assert [resolve_use_ddim(None, r) for r in ("250", "", "ddim50", "DDIM25")] == [False, False, True, True]
    assert resolve_use_ddim(True, "250") is True and resolve_use_ddim(False, "ddim50") is False
    cfg = load_config(None, ["sample.timestep_respacing=250"])
    assert cfg.sample.use_ddim is False  # was DDIM-250 before
    assert load_config(None).sample.use_ddim is True  # the default respacing is ddim50
    assert load_config(None, ["sample.timestep_respacing=250", "sample.use_ddim=true"]).sample.use_ddim is True
    cfg = load_config(None, ["continual.eval_respacing=50", "solver.respacing=ddim10"])
    assert cfg.continual.eval_use_ddim is False and cfg.solver.use_ddim is True
    # evaluation: its own respacing, or (respacing "") the continual grids' sampler
    cfg = load_config(None, ["evaluation.enabled=true", "continual.eval_respacing=50"])
    assert cfg.evaluation.use_ddim is False
    cfg = load_config(None, ["evaluation.respacing=ddim20", "continual.eval_respacing=50"])
    assert cfg.evaluation.use_ddim is True
    cfg = load_config(None, ["method.name=generative_replay", "method.style=guide", "method.timestep_respacing=100",
                             "model.class_cond=true"])  # GUIDE-style replay draws by label
    assert cfg.method.use_ddim is False
    # the same rule where a config's evaluation section is still a plain mapping (evaluation_of)
    from guided_diffusion.evaluation.settings import evaluation_of

    raw = Config()
    raw.continual.eval_respacing, raw.continual.eval_use_ddim = "50", False
    for section, want in (({}, False), ({"use_ddim": True}, True), ({"respacing": "ddim10"}, True)):
        raw.evaluation = dict(section)
        assert evaluation_of(raw).use_ddim is want, section
    # the loaded value is explicit, so a dumped config.yaml reloads to the same sampler
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_load_config_works_on_its_own():
    """A notebook's first call: load_config before anything else imported validates the method, evaluation and
    dkdm sections (their owners are imported by the config, not by launch.cli as a side effect)."""
    import subprocess
    import sys

    code = ("from guided_diffusion.runtime.config import load_config\n"
            "cfg = load_config('yaml/mnist/generative_distillation.yaml')\n"
            "print(type(cfg.method).__qualname__, type(cfg.evaluation).__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GenerativeDistillation.Config", "EvaluationConfig"]
