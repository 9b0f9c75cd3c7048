"""What every run stands on: the config's mechanism (``config``: typed loading, ``base:`` files, overrides,
validation and key docs; ``sections``: the registry that each section's owner fills; ``typed``: typed
values), checkpoint files (``checkpoint``; ADM's resume files: ``adm_resume``), fault injection points
(``faults``), seeds (``seeding``), the compute precision (``precision``), processes and devices (ADM's
``dist_util``) and logs (ADM's ``logger``). Below everything but the math and networks; nothing here
imports the training loop, sampling or the continual loop (docs/architecture.md): the sections' schemas
live with the modules that own them."""
