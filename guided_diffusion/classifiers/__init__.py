"""Classifiers: the solver networks (``nets``: Masip's CNN, GUIDE's ResNet-18, time conditioning),
the noisy classifier's objective and check (``noisy``) and its config section (``config``). ADM's noisy classifier network is
``unet.EncoderUNetModel``; the evaluation's domain classifier is ``evaluation.domain_classifier``."""
