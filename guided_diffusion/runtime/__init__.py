"""What every run stands on: the config schema and its checks (``config``), checkpoint files
(``checkpoint``), fault injection points (``faults``) and seeds (``seeding``). Below everything but
the math and networks: ``config`` reads the respacing grammar of ``respace``; nothing here imports
the training loop, sampling or the continual loop (docs/architecture.md)."""
