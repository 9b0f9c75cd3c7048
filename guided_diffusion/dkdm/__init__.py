"""DKDM: data-free distillation of a diffusion teacher into a student of any architecture.

Dynamic iterative distillation (Xiang et al., "Data-Free Knowledge Distillation for Diffusion
Models with Any Architecture", CVPR 2025, arXiv 2409.03550): the teacher keeps a cache of its own
partially denoised trajectories; every student step advances a random batch of them by one teacher
step and the student learns the teacher's eps (and step variance) on those states.

Modules, one concern each:
    format      the cache on disk (safetensors shards, JSON header, global order, rank slices)
    teacher     loading the teacher (any architecture, strict) and one ancestral step
    prepare     building the initial cache (resumable, independent of the world size)
    cache       the cache in memory during training (random batches, restarts, write-back, state)
    objective   the student's loss, as a TrainLoop objective
    config      the ``dkdm`` config section (importing it registers the schema)
    pipeline    the scripts' bodies (scripts/dynamic_prepare.py, scripts/dynamic_train.py)

The continual method ``dynamic_distillation`` (continual/methods/dynamic_cache.py) reuses the
cache for generative distillation across tasks.
"""
