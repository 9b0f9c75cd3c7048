"""The papers' presets hold the papers' settings, and GUIDE's classifier flags mean GUIDE's things.

The tables below are written from the papers' public code (GUIDE's README commands; Masip et al.'s configs,
README and launch scripts; §4: Continual-Diffusers' defaults); each preset is loaded and compared key by key.
"""

import os
import subprocess
import sys

import pytest

from guided_diffusion.launch import adm_flags, cli
from guided_diffusion.launch.cli import _register_section_schemas
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.sampling.config import adm_sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUGMENT = "crop,rotation,flip,jitter,erasing"  # GUIDE's --classifier_augmentation True (kornia set)

# ------------------------------------------------------------------ GUIDE (cywinski/guide README)

# Diffusion phase: batch, first_task_num_steps, num_steps, gr_n_generated_examples_per_task,
# (timestep_respacing, use_ddim) of the self-rehearsal sampler: GUIDE's flags, here method.sampler by ADM's rule.
GUIDE_DIFFUSION = {
    "cifar10_2": (256, 100_000, 100_000, 25_000, ("1000", False)),
    "cifar10_5": (256, 100_000, 50_000, 10_000, ("1000", False)),
    "cifar100_5": (256, 100_000, 50_000, 10_000, ("1000", False)),
    "cifar100_10": (256, 100_000, 100_000, 5_000, ("1000", False)),
    "imagenet100_5": (100, 100_000, 50_000, 26_000, ("ddim250", True)),
}
# Classifier phase: timestep_respacing (with --use_ddim True), classifier_scale_{min,max}_new, classifier_lr,
# disjoint_classifier_init_num_steps, disjoint_classifier_num_steps, guid_generation_interval,
# classifier_augmentation.
GUIDE_CLASSIFIER = {
    "cifar10_2": ("ddim50", 0.2, 0.01, 5000, 2000, 1, True),
    "cifar10_5": ("ddim50", 0.5, 0.01, 5000, 2000, 5, True),
    "cifar100_5": ("ddim100", 0.5, 0.05, 10000, 2000, 10, True),
    "cifar100_10": ("ddim100", 1.0, 0.05, 10000, 2000, 10, True),
    "imagenet100_5": ("ddim50", 1.0, 0.001, 20000, 20000, 15, False),
}
# Both phases of every command, and GUIDE's defaults (guide/script_args.py) the commands leave as they are.
GUIDE_COMMON = {
    "seed": 0,  # the commands' --seed=0 (13 is only the default)
    "continual.class_order": "fixed",  # data_seed 0: task i holds classes [i*C, (i+1)*C)
    "data.random_flip": True,  # --train_aug=True
    "model.class_cond": True, "model.embedding_kind": "concat_time_1hot", "model.num_res_blocks": 3,
    "model.dropout": 0.1, "model.num_heads": 4, "model.use_scale_shift_norm": True,
    "diffusion.diffusion_steps": 1000, "diffusion.noise_schedule": "linear", "diffusion.learn_sigma": False,
    "train.ema_rate": "0.9999", "train.weight_decay": 0.0, "train.grad_clip": 0.0,  # AdamW, no clipping
    "train.lr_schedule": "constant",  # scheduler_rate 1.0
    "continual.teacher_ema": False,  # prev_model = deepcopy(model): the raw weights
    "method.name": "generative_replay", "method.style": "guide",
    "solver.arch": "resnet18", "solver.replay": "guided", "solver.optimizer": "sgd", "solver.momentum": 0.9,
    "solver.weight_decay": 5e-4, "solver.init_lr": 0.1, "solver.trim_logits": True,
    "solver.guided.use_old_grad": False, "solver.guided.use_new_grad": True, "solver.guided.guid_to_new_classes": True,
    "solver.guided.negate_old_grad": False, "solver.guided.noised_classifier": False,
}
GUIDE_MODEL = {  # CIFAR: the defaults; ImageNet100: the command's extra flags
    "cifar": {"data.image_size": 32, "model.num_channels": 128, "model.channel_mult": "1,2,2,2",
              "model.attention_resolutions": "16,8", "model.num_head_channels": -1, "train.lr": 2e-4,
              "model.resblock_updown": False, "model.use_new_attention_order": False},
    "imagenet100": {"data.image_size": 64, "model.num_channels": 192, "model.channel_mult": "1,2,3,4",
                    "model.attention_resolutions": "32,16,8", "model.num_head_channels": 64, "train.lr": 1e-4,
                    "model.resblock_updown": True, "model.use_new_attention_order": True},
}


def guide_expected(bench):
    batch, first, steps, n, (respacing, use_ddim) = GUIDE_DIFFUSION[bench]
    s_resp, scale, clr, init, csteps, interval, aug = GUIDE_CLASSIFIER[bench]
    out = dict(GUIDE_COMMON)
    out.update(GUIDE_MODEL["imagenet100" if bench.startswith("imagenet") else "cifar"])
    out.update({
        "continual.scenario": bench, "train.batch_size": batch, "continual.first_task_num_steps": first,
        "continual.num_steps": steps, "method.n_per_task": n, "method.sampler": adm_sampler(respacing, use_ddim),
        "solver.batch_size": batch, "solver.sampler": adm_sampler(s_resp, True), "solver.guided.scale_min": scale, "solver.guided.scale_max": scale,
        "solver.lr": clr, "solver.init_num_steps": init, "solver.num_steps": csteps,
        "solver.generation_interval": interval, "solver.augment": AUGMENT if aug else "",
    })
    return out


def readme_classifier_flags(bench):
    """The solver flags of GUIDE's README classifier command for ``bench`` (cywinski/guide README)."""
    s_resp, scale, clr, init, csteps, interval, aug = GUIDE_CLASSIFIER[bench]
    batch = GUIDE_DIFFUSION[bench][0]
    flags = [f"--batch_size={batch}", f"--timestep_respacing={s_resp}", "--use_ddim=True",
             f"--classifier_scale_min_new={scale}", f"--classifier_scale_max_new={scale}", "--use_old_grad=False",
             "--use_new_grad=True", "--guid_to_new_classes=True", "--classifier_init_lr=0.1", f"--classifier_lr={clr}",
             f"--disjoint_classifier_init_num_steps={init}", f"--disjoint_classifier_num_steps={csteps}",
             f"--classifier_augmentation={aug}", "--log_interval=200"]
    if interval != 1:
        flags.append(f"--guid_generation_interval={interval}")
    return flags


def value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)  # method.1.name: a list's entry
    return node


def differences(cfg, expected):
    return {k: (value(cfg, k), v) for k, v in expected.items() if value(cfg, k) != v}


@pytest.fixture(scope="module", autouse=True)
def schemas():
    _register_section_schemas()  # the method section's schemas


@pytest.mark.parametrize("bench", sorted(GUIDE_DIFFUSION))
def test_guide_preset_holds_the_readme_commands(bench):
    cfg = load_config(os.path.join(ROOT, f"yaml/guide/{bench}.yaml"))
    assert differences(cfg, guide_expected(bench)) == {}
    with open(os.path.join(ROOT, f"yaml/guide/{bench}.yaml")) as f:
        head = f.read().split("\nname:")[0]
    assert "README" in head and "cywinski/guide" in head and "Deliberate differences" in head
    assert "python scripts/classifier_cl_train.py" in head  # the solver runs in one process


@pytest.mark.parametrize("bench", sorted(GUIDE_CLASSIFIER))
def test_guides_readme_flags_typed_after_the_preset_change_nothing(bench):
    path = os.path.join(ROOT, f"yaml/guide/{bench}.yaml")
    cfg, args = cli.parse("doc", ["--config", path, *readme_classifier_flags(bench)], adm="guide_classifier")
    adm_flags.check_guide_flags(cfg, args.translations)
    assert cfg.solver == load_config(path).solver


# ------------------------------------------------------------------ GUIDE's classifier flags


def parse(*argv):
    cfg, args = cli.parse("doc", list(argv), adm="guide_classifier")
    adm_flags.check_guide_flags(cfg, args.translations)
    return cfg, args


FLAGS = [  # (argv, {key: value on the config})
    (["--classifier_scale_min_new", "0.5"], {"solver.guided.scale_min": 0.5, "solver.guided.scale_max": 0.5}),
    (["--classifier_scale_max_new", "0.7"], {"solver.guided.scale_min": 0.7, "solver.guided.scale_max": 0.7}),
    (["--classifier_scale_min_new", "0.2", "--classifier_scale_max_new", "0.6"],
     {"solver.guided.scale_min": 0.2, "solver.guided.scale_max": 0.6}),
    (["--classifier_scale_max_new", "0.6", "--classifier_scale_min_new", "0.2"],
     {"solver.guided.scale_min": 0.2, "solver.guided.scale_max": 0.6}),
    (["--classifier_scale_min_old", "0.3", "--classifier_scale_max_old", "0.4", "--use_old_grad", "True",
      "--use_new_grad", "False"],
     {"solver.guided.scale_min": 0.3, "solver.guided.scale_max": 0.4, "solver.guided.use_old_grad": True, "solver.guided.use_new_grad": False}),
    (["--classifier_scale_min_old=0.3", "--classifier_scale_min_new=0.3"],
     {"solver.guided.scale_min": 0.3, "solver.guided.scale_max": 0.3}),
    (["--use_old_grad", "t", "--use_new_grad", "n"], {"solver.guided.use_old_grad": True, "solver.guided.use_new_grad": False}),
    (["--use_new_grad", "YES"], {"solver.guided.use_new_grad": True}),
    (["--guid_to_new_classes", "False"], {"solver.guided.guid_to_new_classes": False}),
    (["--use_old_grad", "1", "--use_new_grad", "0", "--negate_old_grad", "true"],
     {"solver.guided.use_old_grad": True, "solver.guided.negate_old_grad": True}),
    (["--trim_logits", "f"], {"solver.trim_logits": False}),
    (["--train_noised_classifier", "y"], {"solver.guided.noised_classifier": True}),
    (["--disjoint_classifier_init_num_steps", "5000"], {"solver.init_num_steps": 5000}),
    (["--disjoint_classifier_num_steps", "2000"], {"solver.num_steps": 2000}),
    (["--classifier_init_lr", "0.1"], {"solver.init_lr": 0.1}),
    (["--classifier_lr", "0.01"], {"solver.lr": 0.01}),
    (["--classifier_weight_decay", "5e-4"], {"solver.weight_decay": 5e-4}),
    (["--guid_generation_interval", "5"], {"solver.generation_interval": 5}),
    (["--classifier_augmentation", "True"], {"solver.augment": AUGMENT}),
    (["--classifier_augmentation", "False"], {"solver.augment": ""}),
    (["--diffusion_pretrained_dir", "experiments/guide_cifar10_5"],
     {"solver.diffusion_run": "experiments/guide_cifar10_5"}),
    (["--timestep_respacing", "ddim50"], {"solver.sampler": "ddim50"}),  # GUIDE's two flags: one value (ADM's rule)
    (["--timestep_respacing", "1000", "--use_ddim", "False"], {"solver.sampler": "1000"}),
    (["--timestep_respacing", "ddim100", "--use_ddim=True"], {"solver.sampler": "ddim100"}),
    (["--use_ddim", "y"], {"solver.sampler": "ddim25"}),  # over the config's sampler (GUIDE's str2bool)
    (["--depth", "18"], {"solver.arch": "resnet18"}),
    (["--batch_size", "256"], {"solver.batch_size": 256}),
    (["--seed", "0", "--log_interval", "200"], {"seed": 0, "solver.log_interval": 200}),
    (["--embedding_kind", "concat_time_1hot", "--num_channels", "192", "--resblock_updown", "True"],
     {"model.embedding_kind": "concat_time_1hot", "model.num_channels": 192, "model.resblock_updown": True}),
]


@pytest.mark.parametrize("argv,expected", FLAGS, ids=[" ".join(a) for a, _ in FLAGS])
def test_guide_classifier_flags_set_the_solver_keys(argv, expected):
    cfg, args = parse(*argv)
    assert differences(cfg, expected) == {}
    # each flag's translation kept (ADM's sampler pair: one, for both flags)
    assert sum(flag.count("--") for flag, _ in args.translations) == sum(1 for w in argv if w.startswith("--"))


def test_a_flags_translation_is_recorded_for_dry_run():
    _, args = parse("--classifier_scale_min_new", "0.5", "--classifier_augmentation", "True", "--depth", "18")
    assert args.translations == [
        ("--classifier_scale_min_new 0.5", ["solver.guided.scale_min=0.5", "solver.guided.scale_max=0.5"]),
        ("--classifier_augmentation True", [f"solver.augment={AUGMENT}"]),
        ("--depth 18", ["solver.arch=resnet18"]),
    ]


def test_guides_batch_is_the_whole_batch_of_the_one_process_solver(monkeypatch):
    for k, v in dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999").items():
        monkeypatch.setenv(k, v)
    cfg, _ = parse("--batch_size", "256")
    assert cfg.solver.batch_size == 256  # not x processes: the solver refuses more than one
    assert "per process" in adm_flags.describe(adm_flags.flags_for("guide_classifier")["batch_size"])


@pytest.mark.parametrize("argv,match", [
    (["--classifier_scale_min_old", "0.3", "--classifier_scale_min_new", "0.5"], "one range"),
    (["--classifier_scale_min_new", "0.5", "--classifier_scale_max_old", "0.5", "--classifier_scale_min_old", "0.2"],
     "one range"),
    (["--classifier_scale_min_old", "0.3", "--classifier_scale_max_new", "0.5"], "one range"),
    (["--use_old_grad", "True"], "both true"),  # use_new_grad is true by default, as in the presets
    (["--use_old_grad", "True", "--use_new_grad", "True"], "both true"),
    (["--depth", "34"], "ResNet-18 only"),
    (["--use_new_grad", "maybe"], "str2bool"),
    (["--classifier_augmentation", "sometimes"], "str2bool"),
])
def test_refused_combinations(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(*argv)


def test_the_script_prints_each_translation_and_refuses_in_one_line():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    script = [sys.executable, "scripts/classifier_cl_train.py", "--config", "yaml/guide/cifar10_5.yaml"]

    def run(*a):
        return subprocess.run([*script, *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              check=False)

    p = run("--dry-run", "--classifier_lr", "0.02", "--classifier_augmentation", "False")
    assert p.returncode == 0, p.stderr
    assert "# --classifier_lr 0.02 -> solver.lr=0.02" in p.stdout
    assert "# --classifier_augmentation False -> solver.augment=" in p.stdout
    p = run("--dry-run", "--classifier_scale_min_old", "0.3", "--classifier_scale_min_new", "0.5")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "error:" in p.stderr


# ------------------------------------------------------------------ Masip et al. (Atenrev/diffusion_continual_learning), Continual-Diffusers

STEPS_PER_EPOCH = -(-12_000 // 128)  # a task: 2 classes x 6,000 FMNIST images at batch 128 (avalanche keeps the last)
MASIP_COMMON = {  # configs/model/ddim_medium.json, strategy JSONs, cnn.json + cnn_w_diffusion.json, train_cl.py
    "seed": 42,  # the first of their seeds 42, 69, 1714
    "data.dataset": "fashion_mnist", "data.image_size": 32, "data.resize": "resize",
    "model.num_channels": 64, "model.channel_mult": "1,2,4,8", "model.num_res_blocks": 1,
    "model.attention_resolutions": "4", "model.num_head_channels": 8, "model.use_scale_shift_norm": False,
    "model.dropout": 0.0, "model.norm_groups": 32,
    "diffusion.diffusion_steps": 1000, "diffusion.learn_sigma": False,
    "train.batch_size": 128,
    "continual.scenario": "split_fmnist", "continual.num_steps": 100 * STEPS_PER_EPOCH,
    "continual.first_task_num_steps": 100 * STEPS_PER_EPOCH,
    "continual.teacher_ema": False,  # OldGeneratorManager: deepcopy(generator), the raw weights
    "continual.eval_sampler": "ddim10t",  # --generation_steps 10, DDIM with eta 0
    "solver.arch": "cnn", "solver.replay": "soft", "solver.batch_size": 128, "solver.optimizer": "adam",
    "solver.init_lr": 1e-3, "solver.lr": 1e-3, "solver.weight_decay": 0.0,
    "solver.init_num_steps": 20 * STEPS_PER_EPOCH, "solver.num_steps": 20 * STEPS_PER_EPOCH,
    "solver.trim_logits": False, "solver.augment": "", "solver.generation_interval": 1,
    "solver.sampler": "ddim10t", "solver.soft.temperature": 2.0,
    "solver.eval_batch_size": 256,
}
MASIP_GENERATOR = {"diffusion.noise_schedule": "linear", "train.lr": 2e-4, "train.grad_clip": 1.0,
                   "train.adam_beta1": 0.9, "train.adam_beta2": 0.999, "train.weight_decay": 0.0,
                   "train.lr_schedule": "constant"}
REPLAY = {"method.teacher_eta": 0.0, "method.replay_start_timestep": 0, "method.weight_replay_loss": True,
          "method.criterion": "mse"}
MASIP_METHODS = {
    "naive": {**MASIP_GENERATOR, "method.name": "naive"},
    "joint": {**MASIP_GENERATOR, "method.name": "joint"},
    "generative_replay": {**MASIP_GENERATOR, **REPLAY, "method.name": "generative_replay", "method.style": "masip",
                          "method.teacher_steps": 2, "method.lambd": 1.0, "method.replay_batch": 128},
    # README: --generator_strategy_config_path diffusion_full_gen_distill.json --generation_steps 10 --lambd 3.0
    "generative_distillation": {**MASIP_GENERATOR, **REPLAY, "method.name": "generative_distillation",
                                "method.source": "full_generation", "method.teacher_steps": 2, "method.lambd": 3.0,
                                "method.replay_batch": 128},
    "gd_partial_generation": {**MASIP_GENERATOR, **REPLAY, "method.name": "generative_distillation",
                              "method.source": "partial_generation", "method.teacher_steps": 2,
                              "method.replay_batch": 128},
    "gd_gaussian": {**MASIP_GENERATOR, **REPLAY, "method.name": "generative_distillation", "method.source": "gaussian"},
    "gd_lwf": {**MASIP_GENERATOR, **REPLAY, "method.name": "generative_distillation", "method.source": "lwf"},
    "gd_dynamic_cache": {**MASIP_GENERATOR, "method.name": "dynamic_distillation"},
    "generative_replay_guide": {**MASIP_GENERATOR, "method.name": "generative_replay", "method.style": "guide"},
    # Continual-Diffusers' main.py defaults
    "ewc": {**MASIP_GENERATOR, "method.name": "ewc", "method.lambd": 0.1, "method.num_samples": 100},
    "buffer_replay": {**MASIP_GENERATOR, "method.name": "buffer_replay", "method.policy": "balanced",
                      "method.buffer_size": 1000, "method.label_uniform": True},
    "energy_buffer_replay": {"method.name": "buffer_replay", "method.buffer_size": 1000, "method.label_uniform": True,
                             "model.parameterization": "energy", "model.energy_form": "dae", "train.uncond_p": 0.05,
                             "train.lr": 1e-4, "train.adam_beta1": 0.95, "train.adam_beta2": 0.999,
                             "train.weight_decay": 1e-6, "train.grad_clip": 10.0, "train.warmup_steps": 500,
                             "train.lr_schedule": "cosine", "diffusion.noise_schedule": "cosine"},
    # CLoG's published defaults (linhaowei1/CLoG utils/configs.py) on Masip's generator
    "l2": {**MASIP_GENERATOR, "method.name": "l2", "method.lambd": 500.0, "method.reduction": "clog"},
    "si": {**MASIP_GENERATOR, "method.name": "si", "method.c": 5.0, "method.xi": 0.01},
    "mas": {**MASIP_GENERATOR, "method.name": "mas", "method.lambd": 5.0, "method.num_samples": 100},
    "agem": {**MASIP_GENERATOR, "method.name": "agem", "method.memory_size": 200, "method.memory_batch": 200},
    "lora": {**MASIP_GENERATOR, "method.name": "lora", "method.rank": 8, "method.alpha": 8.0, "method.dropout": 0.1,
             "method.targets": "qkv,proj_out,conv1,conv2", "train.uncond_p": 0.0},
    "ensemble": {**MASIP_GENERATOR, "method.name": "ensemble", "train.uncond_p": 0.0},
    # the ewc and buffer_replay presets' settings, applied together
    "ewc_buffer_replay": {**MASIP_GENERATOR, "method.0.name": "ewc", "method.0.lambd": 0.1, "method.0.num_samples": 100,
                          "method.1.name": "buffer_replay", "method.1.policy": "balanced",
                          "method.1.buffer_size": 1000, "method.1.label_uniform": True},
}


def test_every_fmnist_preset_is_in_the_table():
    shipped = {f[:-5] for f in os.listdir(os.path.join(ROOT, "yaml/fmnist")) if f.endswith(".yaml")}
    assert shipped - {"common", "split"} == set(MASIP_METHODS)


@pytest.mark.parametrize("method", sorted(MASIP_METHODS))
def test_fmnist_preset_holds_masips_settings(method):
    path = os.path.join(ROOT, f"yaml/fmnist/{method}.yaml")
    cfg = load_config(path)
    assert differences(cfg, {**MASIP_COMMON, **MASIP_METHODS[method]}) == {}
    with open(path) as f:
        head = f.read().split("\nname:")[0]
    assert "Masip" in head or "Continual-Diffusers" in head  # the run it reproduces (or says no paper runs it)
    assert "differ" in head.lower()  # and what differs (or where that is listed)


def test_fmnist_bases_say_what_differs_and_how_to_switch_to_masips_unconditional_generator():
    with open(os.path.join(ROOT, "yaml/fmnist/common.yaml")) as f:
        common = f.read()
    assert "model.class_cond=false" in common and "unconditional" in common
    with open(os.path.join(ROOT, "yaml/fmnist/split.yaml")) as f:
        split = f.read()
    assert "teacher_ema false" in split and "ddim10t" in split


def test_masips_replay_sampler_is_their_trailing_ddim10():
    from guided_diffusion.diffusion.respace import space_timesteps

    assert sorted(space_timesteps(1000, "ddim10t")) == list(range(99, 1000, 100))  # 999, 899, ..., 99


@pytest.mark.parametrize("bench", ["mnist", "fmnist", "cifar10_5"])
def test_ewc_buffer_replay_composes_the_two_presets_of_its_benchmark(bench):
    def method(name):
        return load_config(os.path.join(ROOT, f"yaml/{bench}/{name}.yaml")).method

    assert method("ewc_buffer_replay") == [method("ewc"), method("buffer_replay")]
