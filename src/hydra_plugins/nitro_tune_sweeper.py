"""Registers `nitro tune`'s sweeper with Hydra, which instantiates plugins only from the hydra_plugins
namespace; the sweeper itself is nitro_cli.tune.sweeper.StudySweeper."""

from nitro_cli.tune import sweeper as _sweeper


class NitroTuneSweeper(_sweeper.StudySweeper):
    """The Optuna study of `nitro tune` (configs/hydra/sweeper/nitro_tune.yaml)."""
