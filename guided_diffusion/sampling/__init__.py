"""Drawing images from a trained model: the few-step samplers as plain functions (``samplers``),
sample sets sharded over ranks (``sample_sets``: grids, evaluation, replay, ``image_sample.py``),
classifier guidance (``classifier_guidance``), classifier-free guidance and composition
(``classifier_free``) and the MCMC samplers of energy models (``mcmc``). ADM's own loops stay in
``gaussian_diffusion``/``respace``."""
