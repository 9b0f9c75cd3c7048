"""Per-task LoRA on ADM's UNet (lora.py): names kept, zero-init exact, merge = unmerged, per-sample routing,
gradients only to the batch's tasks, parameter counts by hand."""

import copy

import pytest
import torch

from guided_diffusion.models import lora
from guided_diffusion.models.unet import UNetModel

GROUPS = [[2, 0], [1], [3]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions: one thread is ~100x faster than two contending ones on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)  # task 0 holds classes 2 and 0, task 1 class 1, task 2 class 3


def tiny(**kw):
    cfg = dict(image_size=8, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
               attention_resolutions=(2,), channel_mult=(1, 2), num_classes=4, num_head_channels=8, norm_groups=8,
               dropout=0.1)
    cfg.update(kw)
    torch.manual_seed(0)
    net = UNetModel(**cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised convs (proj_out, out_layers[3], out) do something
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


def randomize_adapters(net, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_parameters(net).values():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def inputs(n=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([5.0, 400.0, 999.0, 60.0])[:n]


def test_task_table_maps_labels_to_tasks():
    table = lora.task_table(GROUPS)
    assert table.tolist() == [0, 1, 0, 2]
    assert lora.tasks_of_labels(table, torch.tensor([3, 2, 1])).tolist() == [2, 0, 1]
    assert lora.task_table([[1]], num_classes=3).tolist() == [-1, 0, -1]
    with pytest.raises(ValueError, match="no task"):
        lora.tasks_of_labels(lora.task_table([[1]], num_classes=3), torch.tensor([0]))
    with pytest.raises(ValueError, match="tasks 0 and 1"):
        lora.task_table([[0, 1], [1]])


def test_targets_are_clogs_layers_and_base_names_keep():
    net = tiny()
    base = copy.deepcopy(net)
    names = lora.add_lora(net, 3, class_groups=GROUPS)
    # 8 ResBlocks (conv1 = in_layers[2], conv2 = out_layers[3]) and 4 attention blocks (qkv, proj_out)
    assert len(names) == 8 * 2 + 4 * 2
    assert names[:6] == ["input_blocks.1.0.in_layers.2", "input_blocks.1.0.out_layers.3",
                         "input_blocks.3.0.in_layers.2", "input_blocks.3.0.out_layers.3",
                         "input_blocks.3.1.qkv", "input_blocks.3.1.proj_out"]
    assert isinstance(net.get_submodule("input_blocks.3.1.qkv"), torch.nn.Conv1d)  # still a conv
    sd, old = net.state_dict(), base.state_dict()
    assert {k: v.shape for k, v in sd.items() if not lora.is_adapter_name(k)} == {k: v.shape for k, v in old.items()}
    assert "input_blocks.3.1.qkv.lora_A.2.weight" in sd and "input_blocks.1.0.in_layers.2.lora_B.0.weight" in sd
    assert sd["input_blocks.3.1.qkv.lora_B.1.weight"].shape == (96, 8, 1)
    # an ADM checkpoint loads into the base; strict loading names the adapters as missing
    fresh = tiny()
    lora.add_lora(fresh, 3)
    lora.load_base_state_dict(fresh, old)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in old.items())
    with pytest.raises(RuntimeError, match="lora_A"):
        fresh.load_state_dict(old)
    with pytest.raises(RuntimeError, match="unexpected"):
        lora.load_base_state_dict(fresh, {**old, "extra": torch.zeros(1)})


def test_adding_adapters_leaves_the_global_rng_alone():
    net = tiny()
    state = torch.random.get_rng_state()
    lora.add_lora(net, 2, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    other = tiny()
    lora.add_lora(other, 2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(lora.adapter_parameters(net).values(),
                                                  lora.adapter_parameters(other).values()))


@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_fresh_adapters_leave_outputs_unchanged_exactly(backend):
    net = tiny(attention_backend=backend)
    base = copy.deepcopy(net)
    lora.add_lora(net, 3, class_groups=GROUPS)
    x, t = inputs()
    y = torch.tensor([0, 1, 3, 2])
    with torch.no_grad():
        assert torch.equal(net(x, t, y=y), base(x, t, y=y))


@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_a_mixed_batch_equals_each_sample_with_its_own_adapter(backend):
    net = tiny(attention_backend=backend)
    base = copy.deepcopy(net)
    lora.add_lora(net, 3, class_groups=GROUPS)
    randomize_adapters(net)
    x, t = inputs()
    y = torch.tensor([0, 1, 3, 2])  # tasks 0, 1, 2, 0
    with torch.no_grad():
        mixed = net(x, t, y=y)
        assert (mixed - base(x, t, y=y)).abs().max() > 1e-2  # the adapters do act
        for i in range(4):
            torch.testing.assert_close(mixed[i:i + 1], net(x[i:i + 1], t[i:i + 1], y=y[i:i + 1]), rtol=1e-5, atol=1e-5)
        # the label picks the adapter: class 2 gets task 0's (which it shares with class 0), not task 1's
        by_label = net(x[:1], t[:1], y=torch.tensor([2]))
        with lora.route(net, 0):
            assert torch.equal(net(x[:1], t[:1], y=torch.tensor([2])), by_label)
        with lora.route(net, 1):
            assert (net(x[:1], t[:1], y=torch.tensor([2])) - by_label).abs().max() > 1e-3


def test_merged_equals_unmerged_and_unmerge_restores_bit_for_bit():
    net = tiny()
    lora.add_lora(net, 3, class_groups=GROUPS)
    randomize_adapters(net)
    before = {k: v.clone() for k, v in lora.base_parameters(net).items()}
    x, t = inputs()
    y = torch.tensor([1, 1, 1, 1])  # task 1
    with torch.no_grad():
        unmerged = net(x, t, y=y)
        lora.merge(net, 1)
        merged = net(x, t, y=y)
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="merged with task 1"):
            net(x, t, y=torch.tensor([1, 0, 1, 1]))
        lora.unmerge(net)
    assert all(torch.equal(before[k], v) for k, v in lora.base_parameters(net).items())
    with torch.no_grad():
        assert torch.equal(net(x, t, y=y), unmerged)


def test_gradients_reach_only_the_batch_tasks_adapters():
    net = tiny()
    lora.add_lora(net, 3, class_groups=GROUPS)
    randomize_adapters(net)
    for p in lora.base_parameters(net).values():
        p.requires_grad_(False)
    x, t = inputs()
    net.train()
    net(x, t, y=torch.tensor([3, 0, 3, 2])).square().mean().backward()  # tasks 2 and 0
    for name, p in lora.adapter_parameters(net).items():
        task = int(name.split(".")[-2])
        if task == 1:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in lora.base_parameters(net).values())
    assert set(lora.adapter_parameters(net, [1])) == {n for n in lora.adapter_parameters(net) if ".1.weight" in n}


def test_checkpointed_blocks_recompute_with_their_tasks():
    grads = []
    for use_checkpoint in (False, True):
        net = tiny(use_checkpoint=use_checkpoint, dropout=0.0)
        lora.add_lora(net, 3, class_groups=GROUPS)
        randomize_adapters(net)
        x, t = inputs()
        net(x, t, y=torch.tensor([3, 0, 1, 2])).square().mean().backward()
        grads.append([p.grad for p in lora.adapter_parameters(net).values()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_parameter_count_per_rank_by_hand():
    # rank * (9 C_in + C_out) for each 3x3 conv, rank * (C_in + C_out) for each 1x1 Conv1d:
    conv1 = 9 * (16 + 16 + 32 + 32 + 64 + 48 + 48 + 32) + (16 + 32 + 32 + 32 + 32 + 32 + 16 + 16)  # 2800
    conv2 = 9 * (3 * 16 + 5 * 32) + (3 * 16 + 5 * 32)  # 2080
    attention = 4 * ((32 + 96) + (32 + 32))  # qkv and proj_out of 4 blocks at 32 channels: 768
    for rank in (1, 8):
        net = tiny()
        lora.add_lora(net, 3, rank=rank)
        assert lora.adapter_parameter_count(net) == rank * (conv1 + conv2 + attention) == rank * 5648
        assert sum(p.numel() for p in lora.adapter_parameters(net).values()) == 3 * rank * 5648


def test_routing_without_labels_and_in_a_copy():
    net = tiny(num_classes=None)
    lora.add_lora(net, 2)
    randomize_adapters(net)
    x, t = inputs()
    with pytest.raises(RuntimeError, match="no task"):
        net(x, t)
    with torch.no_grad():
        with lora.route(net, torch.tensor([0, 1, 1, 0])):
            mixed = net(x, t)
        with lora.route(net, 1):
            one = net(x, t)
    torch.testing.assert_close(mixed[1:3], one[1:3], rtol=1e-5, atol=1e-5)
    teacher = copy.deepcopy(net)  # the copy routes with its own router
    assert teacher.lora_router is not net.lora_router
    assert all(m.router is teacher.lora_router for m in lora.lora_layers(teacher).values())
    with torch.no_grad(), lora.route(teacher, 1):
        torch.testing.assert_close(teacher(x, t), one, rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside"):
        with lora.route(net, 2):
            net(x, t)
