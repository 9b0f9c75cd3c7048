"""Built-in continual methods; importing this package registers them."""

from . import buffer, ewc, generative, naive  # noqa: F401
from . import dynamic_cache  # noqa: F401
