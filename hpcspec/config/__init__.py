"""Run configuration: frozen dataclasses whose fields declare themselves, layered defaults → TOML
file → command-line flags → ``--set``.

- :mod:`~hpcspec.config.fields`: how an option declares its choices, bounds, flags and roles;
- :mod:`~hpcspec.config.schema`: the sections and their keys (the one source of truth);
- :mod:`~hpcspec.config.options`: what is derived from it (keys, flags, resume whitelist, identity);
- :mod:`~hpcspec.config.rules`: ``validate``; :mod:`~hpcspec.config.loading`: TOML in and out;
- :mod:`~hpcspec.config.docs`: docs/configuration.md and jobs/example.toml, generated.

Torch-free: parsing a config imports no kernel.
"""

from ..errors import ConfigError
from .loading import layered_config, load_config, parse_override, to_toml, tomllib
from .options import (
    command_flags,
    flag_overrides,
    may_change_keys,
    named_tasks,
    options,
    training_identity_keys,
    valid_keys,
)
from .rules import validate
from .schema import (
    BlocksConfig,
    CheckpointConfig,
    CommConfig,
    Config,
    DataConfig,
    DensityConfig,
    EigenConfig,
    HessianConfig,
    LandscapeConfig,
    ModelConfig,
    ProgressConfig,
    TraceConfig,
    TrainConfig,
)

__all__ = [
    "BlocksConfig", "CheckpointConfig", "CommConfig", "Config", "ConfigError", "DataConfig", "DensityConfig",
    "EigenConfig", "HessianConfig", "LandscapeConfig", "ModelConfig", "ProgressConfig", "TraceConfig", "TrainConfig",
    "command_flags", "flag_overrides", "layered_config", "load_config", "may_change_keys", "named_tasks",
    "options", "parse_override", "to_toml", "tomllib", "training_identity_keys", "valid_keys", "validate",
]
