"""The diffusion's math (layer "math and networks" of docs/architecture.md): the pure schedule math
(``diffusion_math``), ADM's ``GaussianDiffusion`` (``gaussian_diffusion``), timestep respacing and the
sampler-value grammar (``respace``), the timestep samplers of training (``resample``) and the KL and
likelihood terms (``losses``). Tensors and schedules only: no network, no files, no ranks, no config.
ADM's import paths (``guided_diffusion.gaussian_diffusion``, ...) still name these modules."""
