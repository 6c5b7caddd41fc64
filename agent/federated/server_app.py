"""The controller side's Flower ``ServerApp``: runs :class:`SeedStrategy` for a number of rounds.

On a real fleet the SuperLink hosts it and the devices' SuperNodes connect to it; in tests and
the benchmark :mod:`agent.federated.inprocess` hands it an in-process grid instead. Either
way the app is the same object and talks to the devices only through Flower messages.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from agent.federated.strategy import SeedStrategy


def make_server_app(strategy: SeedStrategy, rounds: int, *,
                    timeout_s: float = 3600.0) -> ServerApp:
    """A ``ServerApp`` that runs ``rounds`` rounds of ``strategy``.

    Args:
        strategy: the seed strategy; its ``history`` and ``reports`` fill as rounds finish.
        rounds: how many rounds to run.
        timeout_s: how long a round waits for replies (devices that miss it count as dropped).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # no arrays travel: the global adapter is the replayed history (strategy.py)
        strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=timeout_s)

    return app
