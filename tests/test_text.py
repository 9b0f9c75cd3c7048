"""Text conditioning (GLIDE's form in ADM's UNet): attention over a text's tokens against a hand
computation on both backends, the state_dict unchanged without text, the prompt table, the real
all-MiniLM-L6-v2 encoder against sentence-transformers, a local Hugging Face encoder folder, and a
text-conditioned continual run sampled from a new prompt."""

import os
import shutil

import numpy as np
import pytest
import torch

from guided_diffusion.models.prompts import PromptConditioned
from guided_diffusion.models.unet import AttentionBlock, QKVAttention, QKVAttentionLegacy
from guided_diffusion.script_util import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hand_attention(q, k, v, ek, ev):
    """One head: softmax(q^T [ek, k] / sqrt(ch)) [ev, v]^T; q [ch, T], ek [ch, S]."""
    keys, values = torch.cat([ek, k], 1), torch.cat([ev, v], 1)
    w = torch.softmax(q.T @ keys / q.shape[0] ** 0.5, dim=-1)
    return values @ w.T  # [ch, T]


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("backend", ["einsum", "sdpa"])
def test_attention_prepends_the_texts_keys_and_values(legacy, backend):
    torch.manual_seed(0)
    n, heads, ch, T, S = 2, 2, 4, 5, 3
    qkv = torch.randn(n, 3 * heads * ch, T, dtype=torch.float64)
    ekv = torch.randn(n, 2 * heads * ch, S, dtype=torch.float64)
    att = (QKVAttentionLegacy if legacy else QKVAttention)(heads, backend=backend)
    got = att(qkv, encoder_kv=ekv)
    for b in range(n):
        for h in range(heads):
            if legacy:  # heads first, then q, k, v (and k, v for the text)
                q, k, v = qkv[b].view(heads, 3, ch, T)[h]
                ek, ev = ekv[b].view(heads, 2, ch, S)[h]
            else:  # q, k, v first, then heads
                q, k, v = qkv[b].view(3, heads, ch, T)[:, h]
                ek, ev = ekv[b].view(2, heads, ch, S)[:, h]
            torch.testing.assert_close(got[b, h * ch:(h + 1) * ch], _hand_attention(q, k, v, ek, ev))


def _randomize(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised layers too, so that every path shows
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_the_unet_state_dict_is_adms_without_text_and_text_conditions_it():
    kw = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
              num_head_channels=16, in_channels=1, norm_groups=8)
    plain = create_model(**kw, class_cond=True, num_classes=10)
    texted = create_model(**kw, text_dim=24)
    assert not [k for k in plain.state_dict() if "encoder_kv" in k or "text_proj" in k]
    extra = sorted(set(texted.state_dict()) - set(plain.state_dict()))
    blocks = [m for m in texted.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == 4 and all(m.encoder_kv.weight.shape == (2 * m.channels, 24, 1) for m in blocks)
    assert "text_proj.weight" in extra and len([k for k in extra if "encoder_kv" in k]) == 2 * len(blocks)
    assert set(plain.state_dict()) - set(texted.state_dict()) == {"label_emb.weight"}  # the text replaces it
    _randomize(texted).eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 900])
    a = (torch.randn(3, 6, 24), torch.randn(3, 24))
    b = (a[0].flip(0), a[1].flip(0))
    with torch.no_grad():
        out_a, out_b = texted(x, t, text=a), texted(x, t, text=b)
        assert out_a.shape == x.shape and not torch.allclose(out_a, out_b)
        torch.testing.assert_close(texted(x[:1], t[:1], text=(a[0][:1], a[1][:1])), out_a[:1])
    with pytest.raises(ValueError, match="text-conditional"):
        texted(x, t)


def test_a_unit_prompt_starts_at_a_label_embeddings_scale():
    """The pooled state's projection starts as nn.Embedding's rows do (N(0, 1) per channel for a unit-norm
    prompt, no bias), not ~30x weaker as torch's default Linear init: measured over many random prompts."""
    kw = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
              num_head_channels=16, in_channels=1, norm_groups=8)
    torch.manual_seed(0)
    texted = create_model(**kw, text_dim=384)
    labelled = create_model(**kw, class_cond=True, num_classes=10)
    prompts = torch.nn.functional.normalize(torch.randn(256, 384), dim=-1)
    with torch.no_grad():
        text_emb = texted.text_proj(prompts)
    assert torch.count_nonzero(texted.text_proj.bias) == 0
    label_std = labelled.label_emb.weight.std().item()
    assert abs(text_emb.std().item() - 1.0) < 0.05 and abs(label_std - 1.0) < 0.05
    assert abs(text_emb.mean().item()) < 0.05


def test_prompt_conditioned_gives_each_label_its_row():
    seen = []

    class Record(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, text=None):
            seen.append(text)
            return x

    states, pooled = torch.randn(4, 3, 5), torch.randn(4, 5)
    model = PromptConditioned(Record(), states, pooled, center=False)
    model(torch.zeros(2, 1), torch.zeros(2), y=torch.tensor([3, 1]))
    torch.testing.assert_close(seen[0][0], states[[3, 1]])
    torch.testing.assert_close(seen[0][1], pooled[[3, 1]])
    assert list(model.state_dict()) == ["net.w"]  # the table is not part of the weights
    # Centred (the default): minus what the table's prompts share, by hand; the mean pooled difference has
    # norm 1 and the token states' RMS norm is 1; a prompt added later is centred the same way.
    model = PromptConditioned(Record(), states, pooled)
    pm, sm = pooled.mean(0), states.mean(0)
    p_scale = (pooled - pm).norm(dim=-1).mean()
    s_scale = (states - sm).norm(dim=-1).pow(2).mean().sqrt()
    model(torch.zeros(2, 1), torch.zeros(2), y=torch.tensor([3, 1]))
    torch.testing.assert_close(seen[1][0], (states[[3, 1]] - sm) / s_scale)
    torch.testing.assert_close(seen[1][1], (pooled[[3, 1]] - pm) / p_scale)
    c = (pooled - pm) / p_scale
    assert float(c.norm(dim=-1).mean()) == pytest.approx(1.0) and float(c.mean(0).abs().max()) < 1e-6
    new_s, new_p = torch.randn(1, 3, 5), torch.randn(1, 5)
    model.set_prompts(torch.cat([states, new_s]), torch.cat([pooled, new_p]))
    model(torch.zeros(1, 1), torch.zeros(1), y=torch.tensor([4]))
    torch.testing.assert_close(seen[2][1], (new_p - pm) / p_scale)  # the construction's centring, kept
    with pytest.raises(ValueError, match="states \\[K, S, D\\] and pooled \\[K, D\\]"):
        model.set_prompts(states, pooled[:, :2])


def test_minilm_encodes_as_sentence_transformers_and_is_cached(tmp_path):
    from guided_diffusion.pretrained.text_encoder import class_prompts, encode_prompts, text_width

    prompts = class_prompts("a handwritten digit {name}", "", "mnist5k", 10, null_prompt=True)
    assert prompts[7] == "a handwritten digit seven" and prompts[-1] == "" and len(prompts) == 11
    states, pooled = encode_prompts("all-minilm-l6-v2", prompts, 16, root=str(tmp_path))
    assert states.shape == (11, 16, 384) and pooled.shape == (11, 384) and text_width("all-minilm-l6-v2") == 384
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tmp_path / "text_encoders" / "all-MiniLM-L6-v2"), device="cpu")
    want = reference.encode(prompts[:10], convert_to_tensor=True)
    torch.testing.assert_close(pooled[:10], want, atol=1e-5, rtol=1e-4)  # its sentence embedding
    cached = list((tmp_path / "text_cache").iterdir())
    assert len(cached) == 1
    again = encode_prompts("all-minilm-l6-v2", prompts, 16, root=str(tmp_path))
    assert torch.equal(again[0], states) and torch.equal(again[1], pooled)


def test_a_local_hugging_face_encoder_folder(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from guided_diffusion.pretrained.text_encoder import encode_prompts, text_width

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "handwritten", "digit", "one", "two"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    folder = tmp_path / "tiny"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder)
    states, pooled = encode_prompts(str(folder), ["a handwritten digit one", "two"], 6, root=str(tmp_path))
    assert states.shape == (2, 6, 8) and text_width(str(folder)) == 8
    np.testing.assert_allclose(pooled.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="neither a folder nor a packaged encoder"):
        encode_prompts(str(tmp_path / "missing"), ["x"], 4, root=str(tmp_path))
    # Stable Diffusion's layout: text_encoder/ and tokenizer/ side by side, named by the root or the encoder
    sd = tmp_path / "sd"
    (sd / "text_encoder").mkdir(parents=True)
    for n in os.listdir(folder):
        (sd / ("tokenizer" if "token" in n or "vocab" in n else "text_encoder")).mkdir(exist_ok=True)
        shutil.copy(folder / n, sd / ("tokenizer" if "token" in n or "vocab" in n else "text_encoder") / n)
    for name in (sd, sd / "text_encoder"):
        s2, p2 = encode_prompts(str(name), ["a handwritten digit one", "two"], 6, root=str(tmp_path))
        torch.testing.assert_close((s2, p2), (states, pooled))
        assert text_width(str(name)) == 8
    shutil.rmtree(sd / "tokenizer")
    with pytest.raises(ValueError, match="no tokenizer files there"):
        encode_prompts(str(sd), ["a digit"], 6, root=str(tmp_path))


def test_a_text_conditioned_continual_run_samples_from_a_new_prompt(tmp_path):
    import csv

    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion import experiment
    from guided_diffusion.continual.loop import final_weights, run_continual
    from guided_diffusion.runtime.config import ConfigError, load_config
    from guided_diffusion.sampling.sample_sets import sample_set

    preset = os.path.join(ROOT, "yaml/mnist/text_buffer_replay.yaml")
    tiny = ["model.num_channels=16", "model.channel_mult=1,2", "model.attention_resolutions=14",
            "model.num_head_channels=16", "continual.num_steps=2", "continual.first_task_num_steps=2",
            "continual.limit_tasks=2", "train.batch_size=8", "train.save_interval=2", "train.num_threads=1",
            "continual.grid_per_class=1", "continual.eval_sampler=ddim2", "train.uncond_p=0.2",
            f"out_dir={tmp_path}"]
    cfg = load_config(preset, tiny)
    ctx = run_continual(cfg)
    assert len(list(csv.DictReader(open(f"{ctx.run_dir}/metrics.csv")))) == 2
    model = experiment.build_model(cfg, ctx.info)
    assert model.num_prompts == 11  # ten digits and the null prompt of classifier-free guidance
    _, emas = final_weights(f"{ctx.run_dir}/task_1")
    model.load_state_dict(next(iter(emas.values())))
    from guided_diffusion.pretrained.text_encoder import encode_prompts

    states, pooled = encode_prompts(cfg.text.encoder, ["a handwritten digit three"], cfg.text.max_length)
    model.set_prompts(torch.cat([model.states, states]), torch.cat([model.pooled, pooled]))
    spec = experiment.sampling_spec(cfg, ctx.info.shape, ctx.info.num_classes, sampler="ddim2",
                                    guidance_scale=2.0)
    images, labels = sample_set(model, spec, num_samples=2, batch_size=2, seed=0, labels=[11, 11])
    assert images.shape == (2, 28, 28, 1) and list(labels) == [11, 11]
    with pytest.raises(ConfigError, match="set model.class_cond true"):
        load_config(preset, [t for t in tiny if not t.startswith("train.uncond_p")] + ["model.class_cond=false"])


def test_a_continual_run_over_the_tasks_of_a_text_task_dict(tmp_path, text_task_dict):
    """Continual-Diffusers' data: a task dict whose labels are texts, trained task after task in the
    file's own tasks (continual.scenario from_data), each text its own prompt."""
    import csv

    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.runtime.config import load_config

    path = text_task_dict(8, 1)
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/text_buffer_replay.yaml"), [
        "data.dataset=task_dict", f"data.data_dir={path}", f"data.test_dir={path}", "data.image_size=8",
        "continual.scenario=from_data", "text.template='{name}'", "model.num_channels=16", "model.channel_mult=1,2",
        "model.attention_resolutions=4", "model.num_head_channels=16", "continual.num_steps=2",
        "continual.first_task_num_steps=2", "train.batch_size=4", "train.save_interval=2", "train.num_threads=1",
        "continual.grid_per_class=1", "continual.eval_sampler=ddim2", "method.buffer_size=4", f"out_dir={tmp_path}"])
    ctx = run_continual(cfg)
    rows = list(csv.DictReader(open(f"{ctx.run_dir}/metrics.csv")))
    # classes by sorted text: 0 blue square, 1 green star, 2 red circle; the file's task 1, then its task 2
    assert [r["classes"] for r in rows] == ["0 2", "1"]


def test_a_task_dict_with_text_labels_gives_classes_and_their_prompts(tmp_path):
    """Continual-Diffusers' task dicts may carry texts instead of class ids: each distinct text is a
    class (ids by sorted text) and its own prompt."""
    from guided_diffusion import experiment
    from guided_diffusion.data import read_task_dict, write_task_dict
    from guided_diffusion.runtime.config import load_config

    img = np.zeros((4, 8, 8, 1), np.uint8)
    path = str(tmp_path / "tasks.npz")
    write_task_dict(path, {1: {"images": img, "labels": np.array(["a red circle", "a blue square"] * 2)},
                           2: {"images": img, "labels": np.array(["a green star"] * 4)}})
    arrays = read_task_dict(path)
    assert arrays.class_names == ["a blue square", "a green star", "a red circle"] and arrays.num_classes == 3
    assert arrays.labels.tolist() == [2, 0, 2, 0, 1, 1, 1, 1] and arrays.task_ids.tolist() == [1] * 4 + [2] * 4
    cfg = load_config(None, ["data.dataset=task_dict", f"data.data_dir={path}", f"data.test_dir={path}",
                             "data.image_size=8", "model.class_cond=true", "text.encoder=all-minilm-l6-v2"])
    _, _, info = experiment.load_split(cfg, "train")
    assert experiment.prompts_of(cfg, info) == ["a blue square", "a green star", "a red circle"]
    assert info.task_classes == ((0, 2), (1,))  # the file's tasks: continual.scenario from_data
    # a test file with only some of the texts: each text keeps the training file's class id
    from guided_diffusion.data import load_dataset

    test = str(tmp_path / "test.npz")
    write_task_dict(test, {1: {"images": img[:2], "labels": np.array(["a red circle", "a green star"])}})
    assert read_task_dict(test).labels.tolist() == [1, 0]  # alone: ranks among its own two texts
    arrays = load_dataset("task_dict", path, split="test", test_path=test)
    assert arrays.labels.tolist() == [2, 1] and arrays.class_names[2] == "a red circle" and arrays.num_classes == 3
    write_task_dict(test, {1: {"images": img[:1], "labels": np.array(["a purple moon"])}})
    with pytest.raises(ValueError, match=r"text labels \['a purple moon'\] are not classes of the training file"):
        load_dataset("task_dict", path, split="test", test_path=test)
    write_task_dict(path, {1: {"images": img, "labels": np.array(["a", "b", "c", "d"])},
                           2: {"images": img, "labels": np.arange(4)}})
    with pytest.raises(ValueError, match="text labels"):
        read_task_dict(path)
