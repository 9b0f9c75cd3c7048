"""Per-task LoRA adapters (Hu et al. 2022) for ADM's UNet, the task chosen per sample.

A wrapped layer computes ``base(x) + (alpha / rank) * B_k(A_k(dropout(x)))`` for a sample of task k: one
(A, B) pair per task, B zero-initialised (a fresh adapter adds exactly 0), A Kaiming-uniform as peft's
``LoraLayer`` (``a = sqrt(5)``, drawn from a generator seeded by ``add_lora``'s ``seed``, so adding
adapters leaves the global RNG alone). For a k x k conv, A is a k x k conv to ``rank`` channels with the
base's stride, padding and dilation and B a 1 x 1 conv, as peft's ``Conv2d`` LoRA.

**CLoG's configuration** (linhaowei1/CLoG ``networks/diffusion/lora_ddim.py``): ``LoraConfig(r=8,
lora_alpha=8, lora_dropout=0.1, target_modules=['to_k', 'to_q', 'to_v', 'to_out.0', 'conv1', 'conv2'])``
on diffusers' UNet2DModel. On this UNet (``unet.py``) the same layers are (``TARGET_KINDS``):

=================  ===================================================================
diffusers (CLoG)   this UNet
=================  ===================================================================
to_q, to_k, to_v   ``AttentionBlock.qkv``: one 1x1 Conv1d C -> 3C, so ONE adapter of rank r
                   on the packed projection (diffusers has three, each rank r: 6rC vs our
                   4rC parameters per block for q, k, v)
to_out.0           ``AttentionBlock.proj_out`` (1x1 Conv1d C -> C)
conv1              ``ResBlock.in_layers[2]`` (3x3 conv)
conv2              ``ResBlock.out_layers[3]`` (3x3 conv, zero-initialised in ADM)
=================  ===================================================================

Parameters per task and layer: ``rank * (C_in * k^d + C_out)`` for a k^d conv, ``rank * (C_in + C_out)``
for a 1x1 conv or a linear (``adapter_parameter_count``).

**Names.** A wrapped layer is a subclass of its base class (``LoRAConv2d`` is an ``nn.Conv2d``) that keeps
the base's own ``weight`` and ``bias`` Parameters, so the base's state_dict names and shapes do not change
(``input_blocks.1.0.in_layers.2.weight``) and an ADM checkpoint loads into the base
(``load_base_state_dict``). The adapters are submodules beside them:
``<layer>.lora_A.<task>.weight`` and ``<layer>.lora_B.<task>.weight`` (``is_adapter_name``).

**Routing.** Every wrapped layer reads the tasks of the current batch from one ``TaskRouter`` held by the
network (``net.lora_router``, a plain attribute, not a module: it is in no state_dict). A forward
pre-hook on the network sets it before each forward: from the labels ``y`` through ``task_table(class
groups)`` (for class-conditional generation the label names the task, as CLoG reads
``task_id = labels[0] // class_num`` at sampling, linhaowei1/CLoG#4), or from ``route(net, tasks)`` (an
int or a [N] tensor) for a network without labels. The samples of each task present go through their own
adapter (``index_select`` / ``index_add``), so a batch can mix tasks and an adapter absent from the batch
gets no gradient. The router keeps the tasks until the next forward, so a checkpointed block
(``use_checkpoint``) recomputes in backward with the tasks of its forward; a forward of the *same* network
between a forward and its backward would break that. ``copy.deepcopy`` (the teacher) copies the router
with the layers that share it.

The attention's sdpa path applies ``qkv`` and ``proj_out`` as ``F.linear`` on the squeezed 1x1 conv
weights (``unet._conv1x1_linear``), not through the module's forward: that function calls a module's
``forward_tokens`` when it has one, which ``LoRAConv1d`` provides.

``merge(net, task)`` folds one task's adapters into the base weights (``W += (alpha / rank) B A``) for a
single-task network without adapter cost; ``unmerge(net)`` restores the saved base weights bit for bit
(not by subtraction: a merge for sampling in mid-training leaves no rounding behind). While merged, a
batch holding another task is refused. Save state_dicts unmerged.

This module imports only torch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGET_KINDS = ("qkv", "proj_out", "conv1", "conv2")
# CLoG's diffusers target names -> this UNet's (TARGET_KINDS).
CLOG_TARGETS = {"to_q": "qkv", "to_k": "qkv", "to_v": "qkv", "to_out.0": "proj_out", "conv1": "conv1",
                "conv2": "conv2"}
ADAPTER_KEYS = ("lora_A", "lora_B")

Tasks = Union[int, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Labels to tasks


def task_table(class_groups: Sequence[Sequence[int]], num_classes: Optional[int] = None) -> torch.Tensor:
    """[num_classes] long tensor: ``table[c]`` = the index of the group holding class c, -1 for none.

    ``class_groups``: the classes of each task in task order (``[t.classes for t in scenario.tasks]``);
    the class order may be any permutation (CLoG's ``labels // class_num`` assumes consecutive classes).
    """
    flat = [int(c) for g in class_groups for c in g]
    n = num_classes if num_classes is not None else (max(flat) + 1 if flat else 0)
    table = torch.full((n,), -1, dtype=torch.long)
    for k, group in enumerate(class_groups):
        for c in group:
            if not 0 <= int(c) < n:
                raise ValueError(f"class {c} of task {k} is outside [0, {n})")
            if table[int(c)] >= 0:
                raise ValueError(f"class {c} is in tasks {int(table[int(c)])} and {k}")
            table[int(c)] = k
    return table


def tasks_of_labels(table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The task of each label, [N] long on y's device; a label of no task is an error."""
    t = table.to(y.device)[y.long()]
    if bool((t < 0).any()):
        raise ValueError(f"labels {sorted(set(y[t < 0].tolist()))} belong to no task")
    return t


def split_by_task(tasks: Tasks, n: int) -> List[Tuple[int, Optional[torch.Tensor]]]:
    """[(task, indices)] of a batch of n: indices None when the whole batch is that task."""
    if isinstance(tasks, int):
        return [(tasks, None)]
    if tasks.shape != (n,):
        raise ValueError(f"tasks must be an int or a [{n}] tensor, got shape {tuple(tasks.shape)}")
    present = torch.unique(tasks).tolist()  # one host sync per batch
    if len(present) == 1:
        return [(int(present[0]), None)]
    return [(int(k), torch.nonzero(tasks == k).flatten()) for k in present]


class TaskRouter:
    """The tasks of the batch now going through the network, shared by its adapted layers."""

    def __init__(self, num_tasks: int, table: Optional[torch.Tensor] = None):
        self.num_tasks = num_tasks
        self.table = table  # labels -> tasks, or None (route() only)
        self.fixed: Optional[Tasks] = None  # set by route(): overrides the labels
        self._groups: Optional[List[Tuple[int, Optional[torch.Tensor]]]] = None
        self._n: Optional[int] = None

    def set(self, tasks: Optional[Tasks], n: int) -> None:
        if tasks is None:
            self._groups, self._n = None, None
            return
        groups = split_by_task(tasks, n)
        bad = [k for k, _ in groups if not 0 <= k < self.num_tasks]
        if bad:
            raise ValueError(f"tasks {bad} outside the {self.num_tasks} tasks with adapters")
        self._groups, self._n = groups, n

    def groups(self, n: int) -> Optional[List[Tuple[int, Optional[torch.Tensor]]]]:
        if self._groups is not None and self._n != n:
            raise ValueError(f"a layer got a batch of {n}, the network's forward one of {self._n}")
        return self._groups


def _route_hook(module, args, kwargs):
    """Forward pre-hook of an adapted network: set its router from route() or the labels ``y``. A
    module-level function that finds the router on the module, so a deepcopy routes its own."""
    router = module.lora_router
    x = args[0] if args else kwargs["x"]
    y = kwargs["y"] if "y" in kwargs else (args[2] if len(args) > 2 else None)
    if router.fixed is not None:
        router.set(router.fixed, x.shape[0])
    elif router.table is not None and y is not None:
        router.set(tasks_of_labels(router.table, y), x.shape[0])
    else:
        router.set(None, x.shape[0])


# ---------------------------------------------------------------------------------------------
# Adapted layers


class LoRALayer:
    """Per-task adapters beside a base layer's own weight (mixed into a subclass of the base class)."""

    lora_A: nn.ModuleList
    lora_B: nn.ModuleList

    def _init_adapters(self, num_tasks, rank, alpha, dropout, router, make_a, make_b, gen):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.num_tasks, self.rank, self.alpha = num_tasks, rank, alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        a_list, b_list = [], []
        for _ in range(num_tasks):
            a, b = make_a(), make_b()
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=gen)
            nn.init.zeros_(b.weight)
            a_list.append(a.to(self.weight.device, self.weight.dtype))
            b_list.append(b.to(self.weight.device, self.weight.dtype))
        self.lora_A, self.lora_B = nn.ModuleList(a_list), nn.ModuleList(b_list)
        self.router = router
        self.merged_task: Optional[int] = None
        self._unmerged: Optional[torch.Tensor] = None

    def _adapt(self, out, x, adapter):
        """``out`` (the base's output on x) plus each sample's own task's adapter output."""
        groups = self.router.groups(x.shape[0])
        if self.merged_task is not None:
            other = sorted({k for k, _ in groups or []} - {self.merged_task})
            if other:
                raise ValueError(f"merged with task {self.merged_task}, got a batch of tasks {other}: unmerge first")
            return out
        if groups is None:
            raise RuntimeError("no task for this batch: give labels of the class groups, or route(net, tasks)")
        for k, idx in groups:
            if idx is None:
                out = out + self.scaling * adapter(k, x)
            else:
                out = out.index_add(0, idx, self.scaling * adapter(k, x.index_select(0, idx)))
        return out

    def _module_adapter(self, k, x):
        return self.lora_B[k](self.lora_A[k](self.lora_dropout(x)))

    def delta_weight(self, task: int) -> torch.Tensor:
        """``B A`` as a weight of the base's shape (B is 1x1, so it composes with A's kernel)."""
        a, b = self.lora_A[task].weight, self.lora_B[task].weight
        return torch.einsum("or,r...->o...", b.reshape(b.shape[0], b.shape[1]), a)

    @torch.no_grad()
    def merge(self, task: int) -> None:
        if self.merged_task is not None:
            raise RuntimeError(f"already merged with task {self.merged_task}")
        self._unmerged = self.weight.detach().clone()
        self.weight.add_(self.scaling * self.delta_weight(task).to(self.weight.dtype))
        self.merged_task = task

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_task is None:
            return
        self.weight.copy_(self._unmerged)
        self._unmerged, self.merged_task = None, None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lora(tasks={self.num_tasks}, rank={self.rank}, alpha={self.alpha})"


class LoRAConv1d(LoRALayer, nn.Conv1d):
    def forward(self, x):
        return self._adapt(super().forward(x), x, self._module_adapter)

    def forward_tokens(self, x_tokens):
        """The 1x1 conv on token-major input [N, T, C_in] as a linear map, adapters included
        (``unet._conv1x1_linear`` calls this instead of its own ``F.linear``)."""
        if self.kernel_size != (1,) or self.stride != (1,) or self.padding != (0,):
            raise ValueError("forward_tokens needs a 1x1 conv with stride 1 and no padding")

        def adapter(k, x):
            a = F.linear(self.lora_dropout(x), self.lora_A[k].weight.squeeze(-1))
            return F.linear(a, self.lora_B[k].weight.squeeze(-1))

        return self._adapt(F.linear(x_tokens, self.weight.squeeze(-1), self.bias), x_tokens, adapter)


class LoRAConv2d(LoRALayer, nn.Conv2d):
    def forward(self, x):
        return self._adapt(super().forward(x), x, self._module_adapter)


class LoRALinear(LoRALayer, nn.Linear):
    def forward(self, x):
        return self._adapt(super().forward(x), x, self._module_adapter)


def _wrap(base: nn.Module, num_tasks, rank, alpha, dropout, router, gen) -> LoRALayer:
    """The adapted twin of ``base``: built on the meta device (no allocation, no RNG), then given the
    base's own Parameters; its adapters are built uninitialised on the CPU (``skip_init``: no draw from the
    global RNG), initialised from ``gen``, then moved to the base's device and dtype."""
    if type(base) in (nn.Conv1d, nn.Conv2d):
        if base.groups != 1:
            raise ValueError("LoRA on a grouped conv is not supported")
        cls = LoRAConv1d if type(base) is nn.Conv1d else LoRAConv2d
        conv = type(base)
        new = cls(base.in_channels, base.out_channels, base.kernel_size, stride=base.stride, padding=base.padding,
                  dilation=base.dilation, bias=base.bias is not None, padding_mode=base.padding_mode, device="meta")

        def make_a():
            return nn.utils.skip_init(conv, base.in_channels, rank, base.kernel_size, stride=base.stride,
                                      padding=base.padding, dilation=base.dilation, bias=False,
                                      padding_mode=base.padding_mode)

        def make_b():
            return nn.utils.skip_init(conv, rank, base.out_channels, 1, bias=False)
    elif type(base) is nn.Linear:
        new = LoRALinear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")

        def make_a():
            return nn.utils.skip_init(nn.Linear, base.in_features, rank, bias=False)

        def make_b():
            return nn.utils.skip_init(nn.Linear, rank, base.out_features, bias=False)
    else:
        raise TypeError(f"LoRA wraps nn.Conv1d, nn.Conv2d or nn.Linear, not {type(base).__name__}")
    new.weight = base.weight
    new.bias = base.bias
    new._init_adapters(num_tasks, rank, alpha, dropout, router, make_a, make_b, gen)
    new.train(base.training)  # the adapters' dropout too
    return new


# ---------------------------------------------------------------------------------------------
# Network level


def target_names(net: nn.Module, kinds: Iterable[str] = TARGET_KINDS) -> List[str]:
    """Qualified names of the layers of ``kinds`` (``TARGET_KINDS``) in an ADM UNet, in module order.

    Found by shape, not by class (this module imports only torch): an attention block is a module with
    ``qkv``, ``proj_out`` and ``attention``; a residual block one with ``in_layers`` and ``out_layers``,
    whose last entries are conv1 and conv2.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(TARGET_KINDS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; kinds: {TARGET_KINDS} (CLoG's: {CLOG_TARGETS})")
    names = []
    for name, m in net.named_modules():
        prefix = f"{name}." if name else ""
        if all(hasattr(m, a) for a in ("qkv", "proj_out", "attention")):
            names += [prefix + k for k in ("qkv", "proj_out") if k in kinds]
        elif isinstance(getattr(m, "in_layers", None), nn.Sequential) and isinstance(getattr(m, "out_layers", None),
                                                                                     nn.Sequential):
            if "conv1" in kinds:
                names.append(f"{prefix}in_layers.{len(m.in_layers) - 1}")
            if "conv2" in kinds:
                names.append(f"{prefix}out_layers.{len(m.out_layers) - 1}")
    return names


def add_lora(net: nn.Module, num_tasks: int, names: Optional[Sequence[str]] = None, *, rank: int = 8,
             alpha: float = 8.0, dropout: float = 0.1, class_groups: Optional[Sequence[Sequence[int]]] = None,
             num_classes: Optional[int] = None, seed: int = 0) -> List[str]:
    """Wrap the layers ``names`` of ``net`` (default: ``target_names(net)``, CLoG's targets) in place with
    ``num_tasks`` adapters each (defaults: CLoG's rank 8, alpha 8, dropout 0.1), and route by label when
    ``class_groups`` is given. Returns the wrapped names. The base's parameters are not frozen here
    (``adapter_parameters`` / ``base_parameters`` name the two sets)."""
    if hasattr(net, "lora_router"):
        raise RuntimeError("this network already has LoRA adapters")
    names = list(target_names(net) if names is None else names)
    if not names:
        raise ValueError("no layer to adapt")
    table = None if class_groups is None else task_table(class_groups, num_classes)
    if table is not None and len(class_groups) > num_tasks:
        raise ValueError(f"{len(class_groups)} class groups but adapters for {num_tasks} tasks")
    router = TaskRouter(num_tasks, table)
    gen = torch.Generator().manual_seed(int(seed))
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, _wrap(getattr(parent, attr), num_tasks, rank, alpha, dropout, router, gen))
    net.lora_router = router
    net.register_forward_pre_hook(_route_hook, with_kwargs=True)
    return names


def lora_layers(net: nn.Module) -> Dict[str, LoRALayer]:
    return {n: m for n, m in net.named_modules() if isinstance(m, LoRALayer)}


def is_adapter_name(name: str) -> bool:
    """Whether a parameter / state_dict name is an adapter's (``...lora_A.<task>.weight``)."""
    parts = name.split(".")
    return any(k in parts for k in ADAPTER_KEYS)


def _adapter_task(name: str) -> int:
    parts = name.split(".")
    i = max(parts.index(k) for k in ADAPTER_KEYS if k in parts)
    return int(parts[i + 1])


def adapter_parameters(net: nn.Module, tasks: Optional[Iterable[int]] = None) -> Dict[str, nn.Parameter]:
    """The adapters' parameters by name, of all tasks or of ``tasks`` only."""
    keep = None if tasks is None else set(int(k) for k in tasks)
    return {n: p for n, p in net.named_parameters()
            if is_adapter_name(n) and (keep is None or _adapter_task(n) in keep)}


def base_parameters(net: nn.Module) -> Dict[str, nn.Parameter]:
    """Every parameter that is not an adapter's (the ADM network's own)."""
    return {n: p for n, p in net.named_parameters() if not is_adapter_name(n)}


def adapter_parameter_count(net: nn.Module) -> int:
    """Adapter parameters of one task: ``sum over layers of rank * (C_in * k^d + C_out)``."""
    return sum(m.lora_A[0].weight.numel() + m.lora_B[0].weight.numel() for m in lora_layers(net).values())


@contextlib.contextmanager
def route(net: nn.Module, tasks: Tasks):
    """Within the block, every forward of ``net`` uses ``tasks`` (an int, or [N] per sample) whatever its
    labels: for an unconditional network, or to sample a class with another task's adapter."""
    router = net.lora_router
    prev, router.fixed = router.fixed, tasks
    try:
        yield
    finally:
        router.fixed = prev


def merge(net: nn.Module, task: int) -> None:
    """Fold ``task``'s adapters into the base weights of every adapted layer."""
    for m in lora_layers(net).values():
        m.merge(task)


def unmerge(net: nn.Module) -> None:
    """Restore the base weights saved by ``merge`` (bit for bit)."""
    for m in lora_layers(net).values():
        m.unmerge()


def load_base_state_dict(net: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load an un-adapted network's state_dict (an ADM checkpoint) into an adapted one: strict on every
    base name; only the adapters may be missing (they keep their initialisation)."""
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not is_adapter_name(k)]
    if missing or unexpected:
        raise RuntimeError(f"state_dict does not fit the base network: missing {missing}, unexpected {unexpected}")
