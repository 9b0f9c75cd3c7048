"""The ensemble (continual/ensemble.py): each sample to its label's task's network; its parameter count."""

import pytest
import torch

from guided_diffusion.continual.ensemble import TaskEnsemble
from guided_diffusion.models.unet import UNetModel

GROUPS = [[3, 1], [0], [2]]  # task 0: classes 3 and 1; task 1: class 0; task 2: class 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny():
    net = UNetModel(image_size=8, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
                    attention_resolutions=(2,), channel_mult=(1, 2), num_classes=4, num_head_channels=8,
                    norm_groups=8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    return net.eval()


def test_each_sample_goes_to_its_labels_network():
    torch.manual_seed(0)
    ens = TaskEnsemble.from_factory(tiny, 3, GROUPS).eval()
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([3.0, 200.0, 999.0, 40.0, 500.0])
    y = torch.tensor([0, 3, 2, 1, 0])  # tasks 1, 0, 2, 0, 1
    with torch.no_grad():
        out = ens(x, t, y=y)
        for i, k in enumerate([1, 0, 2, 0, 1]):
            torch.testing.assert_close(out[i:i + 1], ens.nets[k](x[i:i + 1], t[i:i + 1], y=y[i:i + 1]),
                                       rtol=1e-5, atol=1e-5)
            other = ens.nets[(k + 1) % 3](x[i:i + 1], t[i:i + 1], y=y[i:i + 1])
            assert (out[i:i + 1] - other).abs().max() > 1e-3  # the members differ: the routing matters
        # one task in the batch: that member's own output, untouched
        same = torch.tensor([3, 1, 3, 1, 1])
        assert torch.equal(ens(x, t, y=same), ens.nets[0](x, t, y=same))
        # explicit tasks override the labels
        assert torch.equal(ens(x, t, y=y, tasks=2), ens.nets[2](x, t, y=y))


def test_parameter_count_is_tasks_times_one_network():
    torch.manual_seed(0)
    one = sum(p.numel() for p in tiny().parameters())
    ens = TaskEnsemble.from_factory(tiny, 3, GROUPS)
    assert ens.parameter_count() == 3 * one
    assert set(ens.state_dict()) == {f"nets.{k}.{name}" for k in range(3) for name in tiny().state_dict()}


def test_unknown_labels_and_tasks_are_errors():
    torch.manual_seed(0)
    ens = TaskEnsemble.from_factory(tiny, 2, [[0, 1], [2]], num_classes=4)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="belong to no task"):
        ens(x, t, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="outside"):
        ens(x, t, y=torch.tensor([0, 1]), tasks=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="no task"):
        TaskEnsemble([tiny()])(x, t, y=torch.tensor([0, 1]))
