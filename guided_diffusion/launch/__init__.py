"""From a command line to a config: the scripts' argument and YAML front end (``cli``: it imports
the modules that register the method, evaluation and dkdm sections, so every script checks every
section the same way) and the translation of ADM's, GUIDE's and DKDM's flags (``adm_flags``).
The top of the library: it may import any layer, and nothing in the library imports it."""
