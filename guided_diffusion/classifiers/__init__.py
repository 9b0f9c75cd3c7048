"""Classifiers: the solver networks (``nets``: Masip's CNN, GUIDE's ResNet-18, time conditioning)
and the noisy classifier's objective and check (``noisy``). ADM's noisy classifier network is
``unet.EncoderUNetModel``; the evaluation's domain classifier is ``evaluation.domain_classifier``."""
