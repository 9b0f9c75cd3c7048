"""What every run stands on, below the diffusion code: the config schema and its checks
(``config``), checkpoint files (``checkpoint``), fault injection points (``faults``) and seeds
(``seeding``). Nothing here imports the network, the diffusion or the continual loop."""
