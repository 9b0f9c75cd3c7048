"""docs/write_a_method.md: its code blocks register two methods, which then train alone and composed."""

import os
import re
import textwrap

import pytest
import torch
import yaml

import guided_diffusion.continual.methods  # noqa: F401  (the built-in methods)
import guided_diffusion.evaluation  # noqa: F401  (the evaluation section's schema)
from guided_diffusion.continual.base import METHODS
from guided_diffusion.runtime.config import load_config
from test_method_contract import TINY, _final_model, _rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "write_a_method.md")


def _blocks(lang):
    with open(PAGE) as f:
        text = f.read()
    return [textwrap.dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S)]


@pytest.fixture(scope="module")
def page_methods():
    """Run the page's Python blocks once (a name registers once per process)."""
    if "l1_anchor" not in METHODS:
        for code in _blocks("python"):
            exec(compile(code, PAGE, "exec"), {"__name__": "write_a_method"})
    return METHODS["l1_anchor"], METHODS["decoder_only"]


def _cfg(tmp_path, method_tree, extra=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump({"name": "page", "base": os.path.join(ROOT, "yaml/mnist/split.yaml"),
                                    "method": method_tree}))
    return load_config(str(path), TINY + [f"out_dir={tmp_path}", *extra])


def test_the_pages_presets_are_its_yaml_blocks(page_methods, tmp_path):
    blocks = [yaml.safe_load(b) for b in _blocks("yaml")]
    preset, composed = blocks
    assert load_config(None, [f"method={yaml.safe_dump(preset['method'], default_flow_style=True).strip()}"]
                       ).method.lambd == 0.01
    m = _cfg(tmp_path, composed["method"]).method
    assert [e.name for e in m] == ["l1_anchor", "buffer_replay"]


def test_the_pages_methods_train_alone_and_composed(page_methods, tmp_path):
    from guided_diffusion.continual.loop import run_continual

    blocks = [yaml.safe_load(b) for b in _blocks("yaml")]
    for i, method in enumerate([blocks[1]["method"], "decoder_only"]):
        cfg = _cfg(tmp_path / str(i), method)
        ctx = run_continual(cfg)
        rows = _rows(ctx.run_dir)
        assert [r["task"] for r in rows] == ["0", "1"]
        if i == 0:  # l1_anchor's declared term reached metrics.csv; buffer replay's images joined the data
            assert float(rows[1]["final_l1_penalty"]) >= 0 and int(rows[1]["images"]) > 900
        else:  # after task 0 only the decoder moved
            w0, w1 = _final_model(ctx.run_dir, 0), _final_model(ctx.run_dir, 1)
            changed = {k for k in w1 if not torch.equal(w0[k], w1[k])}
            assert changed and all(k.startswith(("output_blocks.", "out.")) for k in changed)
