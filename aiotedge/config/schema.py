"""The config's names where they were before the split into sections, loader, files and flags.

Only for the modules that still import from here (aiotedge/nodes/status.py and
bench/reliability/, changed by work running in parallel); new code imports from
aiotedge.config.sections and aiotedge.config.loader. Remove once nothing imports it.
"""

from aiotedge.config.loader import FLAGS, NodeConfig
from aiotedge.config.sections import (
    BrokerConfig,
    CameraConfig,
    HomeAssistantConfig,
    PipelineConfig,
    StageConfig,
    StatsConfig,
)

__all__ = ["FLAGS", "BrokerConfig", "CameraConfig", "HomeAssistantConfig", "NodeConfig",
           "PipelineConfig", "StageConfig", "StatsConfig"]
