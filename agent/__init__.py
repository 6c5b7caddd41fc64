"""mobizo-agent: on-device LLM personalization with MobiZO zeroth-order LoRA training.

The package is split into a pure core (``agent.core``), thin device adapters
(``agent.io``), long-running services (``agent.services``) and the trainer
(``agent.training``). Heavy ML imports (torch, executorch) live only in
``agent.training``, ``agent.io.runtime`` and ``exporter``: the daemon never imports them.
"""

__version__ = "0.1.0"
