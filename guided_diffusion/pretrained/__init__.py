"""The pretrained stages around the diffusion, read from disk (layer "infrastructure" of
docs/architecture.md): the text encoder of prompt conditioning (``text_encoder``, section ``text``) and
the autoencoder of latent diffusion (``latent``, section ``latent``; the CPU preset's small one is
trained beforehand by ``scripts/autoencoder_train.py``). Each owns its config section, reads files and
caches what it encodes, so it sits above ``runtime``; the networks in ``models/`` know no files and no
config. ADM-style flat paths (``guided_diffusion.text_encoder``, ``guided_diffusion.latent``) still name
these modules."""
