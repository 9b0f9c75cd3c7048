"""The method contract: methods composed from a list, the terms each declares, the model adapted at a
task boundary (LoRA, the ensemble), and every new baseline's preset run for a few tiny steps, with
resume bit-identity for a composition and for LoRA."""

import csv
import os

import pytest
import torch

import guided_diffusion.continual.methods  # noqa: F401  (the method schemas)
import guided_diffusion.evaluation  # noqa: F401  (the evaluation section's schema)
from guided_diffusion.runtime.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "data.dataset=mnist5k", "data.image_size=28", "model.num_channels=32", "model.num_res_blocks=1",
    "model.channel_mult=1,2", "model.attention_resolutions=14", "model.num_head_channels=32",
    "model.class_cond=true", "diffusion.diffusion_steps=100", "train.batch_size=8", "train.log_interval=1",
    "train.save_interval=1", "train.num_threads=1", "continual.num_tasks=5", "continual.classes_per_task=2",
    "continual.limit_tasks=2", "continual.num_steps=2", "continual.first_task_num_steps=2",
    "continual.grid_per_class=0", "evaluation.enabled=false", "train.ema_rate=0.9",
]
SMALL = {"ewc": ["method.num_samples=4"], "mas": ["method.num_samples=4"], "agem": ["method.memory_batch=4"],
         "ewc_buffer_replay": ["method=[{name: ewc, num_samples: 4}, buffer_replay]"]}


def _cfg(tmp_path, preset, extra=()):
    return load_config(os.path.join(ROOT, f"yaml/mnist/{preset}.yaml"),
                       TINY + SMALL.get(preset, []) + [f"out_dir={tmp_path}", *extra])


def _rows(run_dir):
    with open(f"{run_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def _final_model(run_dir, task):
    from guided_diffusion.runtime import checkpoint as ckpt

    d = f"{run_dir}/task_{task}"
    step = ckpt.latest_checkpoint(d)
    return ckpt.load_torch(f"{d}/model{step:06d}.pt")


# ------------------------------------------------------------------ the config: lists and what composes


def test_a_method_is_a_mapping_a_name_or_a_list():
    one = load_config(None, ["method=ewc"]).method
    assert one.name == "ewc" and one == load_config(None, ["method.name=ewc"]).method
    assert load_config(None, ["method=[ewc]"]).method == one  # a one-entry list is that entry
    both = load_config(None, ["method=[{name: ewc, lambd: 5}, buffer_replay]"]).method
    assert [m.name for m in both] == ["ewc", "buffer_replay"] and both[0].lambd == 5.0
    with pytest.raises(ConfigError, match=r"method\[1\]\.lamd.*did you mean 'lambd'"):
        load_config(None, ["method=[ewc, {name: l2, lamd: 1}]"])


@pytest.mark.parametrize("methods, message", [
    ("[ewc, ewc]", "lists ewc more than once"),
    ("[generative_replay, generative_distillation]", "each makes the step's forward pass itself"),
    ("[{name: buffer_replay, rehearsal_coef: 0.5}, generative_distillation]", "each makes the step's forward pass"),
    ("[lora, ensemble]", "each chooses the model it trains"),
    ("[lora, si]", "lora cannot compose with si"),
])
def test_a_list_that_cannot_compose_is_refused_in_one_line(methods, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"), [f"method={methods}"])
    assert "\n" not in str(e.value)


def test_the_loop_names_no_method_and_no_method_term():
    """A new method touches no loop: continual/loop.py names no registered method and none of the terms
    the methods declare (the objective's own, loss/mse/vb, are not a method's)."""
    from guided_diffusion.continual.base import METHODS

    with open(os.path.join(ROOT, "guided_diffusion/continual/loop.py")) as f:
        src = f.read()
    terms = {t for cls in METHODS.values() for t in (cls.terms if isinstance(cls.terms, tuple) else ())}
    terms |= {"data_loss", "replay_loss", "ewc_penalty", "teacher_nfe", "bce", "kl", "l2_penalty", "si_penalty"}
    named = [w for w in sorted(set(METHODS) | terms) if f'"{w}"' in src or f"'{w}'" in src]
    assert not named, named


def test_a_new_parameter_starts_its_ema_from_its_weights_and_a_frozen_one_keeps_its_average(tmp_path):
    from guided_diffusion.data import InfiniteLoader
    from guided_diffusion.diffusion.resample import UniformSampler
    from guided_diffusion.train_util import TrainConfig
    from guided_diffusion.script_util import create_gaussian_diffusion, create_model
    from guided_diffusion.train_util import DiffusionObjective, TrainLoop

    torch.manual_seed(0)
    net = create_model(8, 32, 1, channel_mult="1,2", attention_resolutions="4", num_head_channels=32,
                       class_cond=True, num_classes=4, in_channels=1)
    net.extra = torch.nn.Parameter(torch.ones(3))  # a parameter the previous EMA does not know
    frozen = "out.2.weight"
    net.get_parameter(frozen).requires_grad_(False)
    init = {n: p.detach() + 1 for n, p in net.named_parameters() if n != "extra"}
    d = create_gaussian_diffusion(steps=50)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 4, (16,))
    loop = TrainLoop(model=net, data=InfiniteLoader(x, y, 8, seed=0), run_dir=str(tmp_path), seed=0,
                     cfg=TrainConfig(total_steps=2, batch_size=8, ema_rate="0.9", save_interval=0),
                     objective=DiffusionObjective(d, UniformSampler(d), class_cond=True), init_ema={0.9: init})
    loop.run()
    ema = loop.ema_state_dicts()[0.9]
    assert set(ema) == {n for n, _ in net.named_parameters()}  # the whole network, frozen parameters too
    assert torch.equal(ema[frozen], init[frozen])  # not trained: its average does not move
    assert torch.equal(ema["extra"], torch.ones(3))  # no KeyError: started from its weights (no gradient moved them)
    assert all(p.requires_grad for n, p in net.named_parameters() if n != frozen)


def test_the_rehearsal_coefficient_weighs_the_buffers_images_by_hand():
    """buffer_replay's rehearsal_coef: mean(current images' losses) + coef * mean(buffer images' losses),
    with the same draws as the plain diffusion objective (the buffer's images: the old classes')."""
    from guided_diffusion.continual.methods.buffer import RehearsalObjective
    from guided_diffusion.diffusion.resample import UniformSampler
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.train_util import DiffusionObjective, StepContext

    torch.manual_seed(0)
    d = create_gaussian_diffusion(steps=50)
    net = lambda x, t, y=None: 0.3 * x + 0.01 * y.float().view(-1, 1, 1, 1)  # noqa: E731
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 2, 0])  # old classes: 0 and 1
    base = DiffusionObjective(d, UniformSampler(d), class_cond=True)
    ctx = lambda: StepContext(0, 0, 1, torch.Generator().manual_seed(3), 0, 1)  # noqa: E731
    loss, terms = RehearsalObjective(base, 0.25, (0, 1))(net, x, y, ctx())
    g = ctx().generator
    t, _ = base.sample_t(6, x.device, StepContext(0, 0, 1, g, 0, 1))
    per = d.training_losses(net, x, t, model_kwargs={"y": y}, noise=torch.randn(x.shape, generator=g))["loss"]
    old = torch.tensor([True, True, False, False, False, True])
    assert torch.allclose(loss, per[~old].mean() + 0.25 * per[old].mean())
    assert torch.allclose(terms["data_loss"], per[~old].mean()) and torch.allclose(terms["replay_loss"], per[old].mean())


# ------------------------------------------------------------------ every preset runs


@pytest.mark.parametrize("preset", ["l2", "si", "mas", "agem", "lora", "ensemble", "ewc_buffer_replay",
                                    "buffer_replay_rehearsal"])
def test_each_new_preset_runs_the_continual_loop(tmp_path, preset):
    from guided_diffusion.continual.loop import run_continual

    cfg = _cfg(tmp_path, preset)
    ctx = run_continual(cfg)
    rows = _rows(ctx.run_dir)
    assert [r["task"] for r in rows] == ["0", "1"]
    term = {"l2": "l2_penalty", "si": "si_penalty", "mas": "mas_penalty", "ewc_buffer_replay": "ewc_penalty",
            "buffer_replay_rehearsal": "replay_loss"}.get(preset)
    if term:  # the method's declared term reached metrics.csv once it applies (task 1)
        assert rows[0][f"final_{term}"] == "" and float(rows[1][f"final_{term}"]) >= 0
    if preset == "agem":
        assert int(rows[1]["agem_projected_steps"]) in (0, 1, 2)
    if preset in ("ewc_buffer_replay", "buffer_replay_rehearsal"):
        assert int(rows[1]["images"]) > 900  # the buffer's images joined the task's
    if preset == "ewc_buffer_replay":
        from guided_diffusion.evaluation.report import read_run

        assert read_run(ctx.run_dir).method == "ewc+buffer_replay"  # the report's label of a composition
    w0, w1 = _final_model(ctx.run_dir, 0), _final_model(ctx.run_dir, 1)
    # extra_state_M: the numbers the method keeps after each task (parameter-sized tensors, stored images)
    P, image = sum(v.numel() for v in w0.values()), 28 * 28
    state = {"l2": [P, P], "si": [3 * P, 3 * P], "mas": [2 * P, 2 * P], "agem": [200 * image] * 2,
             "lora": [0, 0], "ensemble": [0, 0],
             "ewc_buffer_replay": [2 * P + 500 * image, 4 * P + 500 * image],  # SMALL's list: a buffer of 500
             "buffer_replay_rehearsal": [200 * image] * 2}[preset]
    assert [float(r["extra_state_M"]) for r in rows] == [round(n / 1e6, 6) for n in state]
    if preset == "lora":
        from guided_diffusion.models.lora import is_adapter_name

        changed = {k for k in w1 if not torch.equal(w0[k], w1[k])}
        assert changed and all((is_adapter_name(k) and ".1.weight" in k) or k.startswith("label_emb.")
                               for k in changed), sorted(changed)[:5]
        assert all(torch.equal(w0[k], torch.zeros_like(w0[k])) for k in w0 if "lora_B" in k)  # task 0: zero
        assert int(rows[0]["extra_params"]) == 5 * sum(w0[k].numel() for k in w0 if ".lora_" in k and ".0.weight"
                                                       in k.split("lora_")[1][1:])
    if preset == "ensemble":
        changed = {k.split(".")[1] for k in w1 if not torch.equal(w0[k], w1[k])}
        assert changed == {"1"}  # task 1 trains its own network alone
        one = sum(v.numel() for k, v in w0.items() if k.startswith("nets.0."))
        assert int(rows[0]["extra_params"]) == 4 * one


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("preset", ["ewc_buffer_replay", "lora", "si", "agem"])
def test_resume_of_a_composed_method_lora_and_the_hooks_state_is_bit_identical(tmp_path, preset):
    """Killed between the tasks, then mid-task: the rerun ends as the uninterrupted run (SI's path
    integral and A-GEM's memory resume from the checkpoint mid-task)."""
    from guided_diffusion.continual.loop import run_continual

    steps = ["continual.num_steps=4", "train.save_interval=2"]
    a = _cfg(tmp_path / "a", preset, steps)
    run_continual(a)
    run_continual(_cfg(tmp_path / "b", preset, steps + ["continual.limit_tasks=1"]))  # stopped after task 0
    b = _cfg(tmp_path / "b", preset, steps)
    run_continual(b)
    run_dir = f"{tmp_path}/b/{b.name}"
    # Take task 1 back to its step-2 checkpoint, as if the process had been killed after step 2.
    for name in ("checkpoint000004.json", "task_done.json"):
        os.remove(f"{run_dir}/task_1/{name}")
    run_continual(b)
    with open(f"{run_dir}/task_1/log.txt") as f:
        assert "resumed from step 2" in f.read()
    wa, wb = _final_model(f"{tmp_path}/a/{a.name}", 1), _final_model(run_dir, 1)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(f"{d}/task_1/method_state.pt", weights_only=False) for d in (f"{tmp_path}/a/{a.name}", run_dir))
    _assert_equal(sa, sb)  # the method's state after the task too (SI's omega, A-GEM's memory and its generator)
    ra, rb = _rows(f"{tmp_path}/a/{a.name}"), _rows(run_dir)
    drop = ("sec", "steps_this_run")
    assert [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in ra] == \
           [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in rb]


def _assert_equal(a, b):
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_equal(u, v)
    else:
        assert a == b


# ------------------------------------------------------------------ task 0 from another run (continual.init_from)


@pytest.mark.parametrize("preset", ["lora", "ensemble"])
def test_an_adapting_method_takes_a_plain_runs_first_task(tmp_path, preset):
    """LoRA and the ensemble share the other methods' task 0 (the benchmark trains it once): the copied
    weights and EMA become the adapted network's, equal to what the method's own task 0 gives; the
    reverse, a plain run from an adapted run's task 0, is refused in one line."""
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.runtime import checkpoint as ckpt

    src = run_continual(_cfg(tmp_path / "src", "naive", ["continual.limit_tasks=1"]))
    seeded = run_continual(_cfg(tmp_path / "seeded", preset, [f"continual.init_from={src.run_dir}"]))
    own = run_continual(_cfg(tmp_path / "own", preset))
    plain, w_seeded, w_own = (_final_model(r, 0) for r in (src.run_dir, seeded.run_dir, own.run_dir))
    assert w_seeded.keys() == w_own.keys() and all(torch.equal(w_seeded[k], w_own[k]) for k in w_own)
    prefix = "nets.0." if preset == "ensemble" else ""
    assert all(torch.equal(plain[k], w_seeded[prefix + k]) for k in plain)
    assert ckpt.verify_checkpoint(f"{seeded.run_dir}/task_0", 2) is None  # the manifest lists the converted files
    w1 = _final_model(seeded.run_dir, 1)
    assert any(not torch.equal(w1[k], w_seeded[k]) for k in w1)  # task 1 trained on from there
    with pytest.raises(ConfigError, match=f"its method \\({preset}\\) adapts the network"):
        run_continual(_cfg(tmp_path / "back", "naive", [f"continual.init_from={own.run_dir}"]))
    again = run_continual(_cfg(tmp_path / "again", preset,
                               [f"continual.init_from={own.run_dir}", "continual.limit_tasks=1"]))
    w_again = _final_model(again.run_dir, 0)  # a run of the same method takes it as it is
    assert w_again.keys() == w_own.keys() and all(torch.equal(w_again[k], w_own[k]) for k in w_own)


# ------------------------------------------------------------------ an adapted network outside its run


@pytest.mark.parametrize("preset", ["lora", "ensemble"])
def test_an_adapted_networks_export_samples_and_replays(tmp_path, preset, monkeypatch, capsys):
    """The export's JSON records the method that adapted the network: image_sample.py rebuilds it from
    the export alone; the run's config rebuilds it for the classifier's replay (``diffusion_after``); the
    weights without either are refused in one line."""
    import json
    import runpy
    import shutil
    import sys

    from guided_diffusion import experiment
    from guided_diffusion.continual.adaptation import adapted_model
    from guided_diffusion.continual.loop import final_weights, run_continual

    ctx = run_continual(_cfg(tmp_path / "run", preset))
    export = f"{ctx.run_dir}/task_1/ema_0.9_000002.safetensors"
    with open(export.replace(".safetensors", ".json")) as f:
        assert json.load(f)["adaptation"]["method"]["name"] == preset
    cfg = load_config(f"{ctx.run_dir}/config.yaml")  # the solver's way: the diffusion run's config
    _, emas = final_weights(f"{ctx.run_dir}/task_1")
    info = experiment.dataset_info(cfg)
    adapted_model(cfg, info, experiment.build_model(cfg, info)).load_state_dict(emas[0.9])  # strict
    main = runpy.run_path(os.path.join(ROOT, "scripts", "image_sample.py"), run_name="image_sample")["main"]
    plain = [o for o in TINY if o.split("=")[0].split(".")[0] in ("data", "model", "diffusion")]
    args = ["image_sample.py", *plain, "train.num_threads=1", "--num_samples", "4", "--batch_size", "4",
            "--timestep_respacing", "3", "--use_ddim", "false", "--classes", "0,2"]
    monkeypatch.setattr(sys, "argv", args + ["--model_path", export, "--out_dir", str(tmp_path / "s")])
    assert main() == 0
    import numpy as np

    assert list(np.load(tmp_path / "s" / "samples_4x28x28x1.npz")["arr_1"]) == [0, 0, 2, 2]  # tasks 0 and 1
    bare = str(tmp_path / "bare.safetensors")
    shutil.copy(export, bare)  # no JSON beside it
    monkeypatch.setattr(sys, "argv", args + ["--model_path", bare, "--out_dir", str(tmp_path / "b")])
    kind = "LoRA adapters" if preset == "lora" else "an ensemble of networks"
    with pytest.raises(ConfigError, match=f"holds {kind} .* give the run's config.yaml"):
        main()
    capsys.readouterr()
    # scripts/tools/timestep_error.py: the export beside a plain network's weights; the bare copy refused (exit 2)
    tool = runpy.run_path(os.path.join(ROOT, "scripts", "tools", "timestep_error.py"), run_name="te")["main"]
    plain_run = run_continual(_cfg(tmp_path / "plain", "naive", ["continual.limit_tasks=1"]))
    teacher = f"{plain_run.run_dir}/task_0/ema_0.9_000002.safetensors"
    te = ["timestep_error.py", "--config", f"{ctx.run_dir}/config.yaml", "--timesteps", "0,50", "--images", "4",
          "train.num_threads=1", "--models"]
    monkeypatch.setattr(sys, "argv", te + [teacher, export])
    capsys.readouterr()
    assert tool() == 0 and len(capsys.readouterr().out.splitlines()) == 3  # the header and two timesteps
    monkeypatch.setattr(sys, "argv", ["timestep_error.py", "--config", os.path.join(ROOT, "yaml/mnist/split.yaml"),
                                      "--timesteps", "0,50", "--images", "4", *plain, "--models", bare])
    assert tool() == 2 and f"holds {kind}" in capsys.readouterr().err


def test_the_classifier_replays_from_a_lora_run(tmp_path):
    """The continual classifier's plain replay from a LoRA diffusion run: ``diffusion_after`` rebuilds the
    adapted network from the run's config, and each old class is drawn through its task's adapter."""
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.continual.solver import run_solver

    ctx = run_continual(_cfg(tmp_path / "run", "lora"))
    cfg = load_config(f"{ctx.run_dir}/config.yaml", [
        "solver.replay=plain", "solver.arch=mlp", "solver.init_num_steps=2", "solver.num_steps=2",
        "solver.batch_size=8", "solver.augment=", "solver.sampler=3",
        "solver.generation_interval=2", f"solver.diffusion_run={ctx.run_dir}"])
    solver = run_solver(cfg)
    assert sorted(solver.acc) == [0, 1]
