"""The networks (layer "math and networks" of docs/architecture.md): ADM's UNet and its blocks (``unet``,
``nn``), a Diffusion Transformer (``dit``), the energy parameterisation (``energy``), Masip's VAE
(``vae``), a diffusers UNet behind the UNet's interface (``diffusers_unet``), prompt conditioning
(``prompts``) and per-task LoRA adapters (``lora``). A network sees ``(x, t, y)``: no schedule, no
files, no ranks, no config. ADM's import paths (``guided_diffusion.unet``, ...) still name these modules."""
