"""guided-diffusion-cl: continual learning of diffusion models on an ADM core."""
