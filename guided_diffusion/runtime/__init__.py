"""What every run stands on: the config's mechanism (``config``: typed loading, ``base:`` files, overrides,
validation and key docs; ``sections``: the registry that each section's owner fills; ``typed``: typed
values), checkpoint files (``checkpoint``), fault injection points (``faults``) and seeds (``seeding``).
Below everything but the math and networks; nothing here imports the training loop, sampling or the
continual loop (docs/architecture.md): the sections' schemas live with the modules that own them."""
