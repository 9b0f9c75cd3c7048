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


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
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


def test_one_sampler_value_per_section(tmp_path):
    """Every section that samples has one value of the respacing grammar: ddimN is DDIM, N ancestral
    (ADM's --timestep_respacing N), a solver's name that solver; the evaluation's "" is the grids'."""
    import guided_diffusion.continual.methods  # noqa: F401  (method schemas)
    import guided_diffusion.evaluation  # noqa: F401  (evaluation schema)
    from guided_diffusion.evaluation.settings import evaluation_of, evaluation_sampler
    from guided_diffusion.sampling.config import sampler_kind

    assert [sampler_kind(v) for v in ("250", "", "20t", "10,10", "ddim50", "DDIM25", "ddim10t", "unipc10l")] == \
        ["ancestral"] * 4 + ["ddim"] * 3 + ["unipc"]
    cfg = load_config(None)
    assert (cfg.sample.sampler, cfg.continual.eval_sampler, cfg.solver.sampler) == ("ddim50", "ddim25", "ddim25")
    cfg = load_config(None, ["evaluation.enabled=true", "continual.eval_sampler=50"])
    assert evaluation_sampler(cfg.evaluation, cfg) == "50"  # "": the grids' sampler
    cfg = load_config(None, ["evaluation.sampler=ddim20", "continual.eval_sampler=50"])
    assert evaluation_sampler(cfg.evaluation, cfg) == "ddim20"
    cfg = load_config(None, ["method.name=generative_replay", "method.style=guide", "method.sampler=100",
                             "model.class_cond=true"])  # GUIDE-style replay draws by label
    assert cfg.method.sampler == "100"
    raw = Config()  # a config's evaluation section still a plain mapping (evaluation_of)
    raw.evaluation = {"sampler": "ddim10"}
    assert evaluation_of(raw).sampler == "ddim10"
    # DDIM's eta beside a sampler that is not DDIM: refused, not dropped
    with pytest.raises(ConfigError, match=r"sample.eta = 0.5 is DDIM's, but sample.sampler = '250' is ADM's ancestral "
                                          r"sampler: set sample.eta 0, or sample with DDIM \(sample.sampler=ddim250\)"):
        load_config(None, ["sample.sampler=250", "sample.eta=0.5"])
    with pytest.raises(ConfigError, match="is the unipc solver"):
        load_config(None, ["sample.sampler=unipc10", "sample.eta=1"])
    with pytest.raises(ConfigError, match=r"evaluation.eta = 1.0 is DDIM's, but the evaluation samples with "
                                          r"continual.eval_sampler = '50'"):
        load_config(None, ["continual.eval_sampler=50", "evaluation.eta=1"])
    assert load_config(None, ["sample.sampler=ddim10t", "sample.eta=1"]).sample.eta == 1.0
    with pytest.raises(ConfigError, match=r"method.cache_sampler = 'ddim50' is DDIM, but the cache advances .* by "
                                          r"ancestral steps \(DKDM\): write method.cache_sampler=50"):
        load_config(None, ["method.name=dynamic_distillation", "method.cache_sampler=ddim50"])
    # the loaded value is explicit, so a dumped config.yaml reloads to the same sampler
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


@pytest.mark.parametrize("words, line", [
    (["sample.timestep_respacing=250"], "sample.timestep_respacing was replaced by sample.sampler: write sample.sampler=250"),
    (["sample.use_ddim=true", "sample.timestep_respacing=ddim50"],
     "sample.use_ddim and sample.timestep_respacing were replaced by sample.sampler: write sample.sampler=ddim50"),
    (["sample.use_ddim=true", "sample.timestep_respacing="],  # ADM: DDIM over every step
     "sample.use_ddim and sample.timestep_respacing were replaced by sample.sampler: write sample.sampler=ddim1000"),
    (["sample.use_ddim=false"],  # over the default ddim50 (ancestral steps on DDIM's striding: no value)
     "sample.use_ddim was replaced by sample.sampler, which has no value for ancestral steps on DDIM's striding "
     "'ddim50': write sample.sampler=50 (ancestral, ADM's even spacing) or sample.sampler=ddim50 (DDIM)"),
    (["continual.eval_respacing=50", "continual.eval_use_ddim=false"],
     "continual.eval_use_ddim and continual.eval_respacing were replaced by continual.eval_sampler: write "
     "continual.eval_sampler=50"),
    (["evaluation.use_ddim=false", "continual.eval_sampler=50"],  # respacing "": the grids'
     "evaluation.use_ddim was replaced by evaluation.sampler: write evaluation.sampler=50"),
    (["evaluation.respacing="], 'evaluation.respacing was replaced by evaluation.sampler: write evaluation.sampler=""'),
    (["solver.respacing=ddim10t", "solver.use_ddim=false"],
     "solver.use_ddim and solver.respacing were replaced by solver.sampler: write solver.sampler=10t"),
    (["method.name=generative_replay", "method.timestep_respacing=1000"],
     "method.timestep_respacing was replaced by method.sampler: write method.sampler=1000"),
    (["method.name=dynamic_distillation", "method.cache_respacing=50"],
     "method.cache_respacing was replaced by method.cache_sampler: write method.cache_sampler=50"),
])
def test_replaced_sampler_keys_are_refused_with_the_value_to_write(words, line):
    with pytest.raises(ConfigError) as e:
        load_config(None, words)
    assert str(e.value) == f"the command line: {line}"


def test_replaced_sampler_keys_in_a_file_and_in_a_saved_run(tmp_path):
    """A config file: refused, naming the file, the pair read with its base; a run's saved config.yaml
    (a record of what ran): read as the keys that replaced them."""
    write(tmp_path, "sample: {sampler: '100'}\n", "base.yaml")
    path = write(tmp_path, "base: base.yaml\nsample: {use_ddim: true}\n", "c.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: sample.use_ddim was replaced by sample.sampler, which has no value for DDIM steps "
                            "on ADM's even spacing '100': write sample.sampler=ddim100 (DDIM, ADM's integer stride) or "
                            "sample.sampler=100 (ancestral)")
    old = ("sample: {timestep_respacing: '25', use_ddim: null, eta: 0.0}\n"
           "continual: {eval_respacing: ddim10t, eval_use_ddim: true}\n"
           "evaluation: {respacing: '', use_ddim: false}\n"
           "solver: {respacing: ddim1000, use_ddim: false}\n")
    saved = write(tmp_path, old, "config.yaml")
    cfg = load_config(saved, record=True)
    assert (cfg.sample.sampler, cfg.continual.eval_sampler, cfg.evaluation.sampler, cfg.solver.sampler) == \
        ("25", "ddim10t", "10t", "1000")  # ddim1000 ancestral: the same steps as 1000
    assert cfg == load_config(None, ["sample.sampler=25", "continual.eval_sampler=ddim10t", "evaluation.sampler=10t",
                                     "solver.sampler=1000"])
    with pytest.raises(ConfigError, match="sample.use_ddim and sample.timestep_respacing were replaced by sample.sampler: "
                                          "write sample.sampler=25$"):
        load_config(saved)  # not read as a record: refused


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
