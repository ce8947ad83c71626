"""A plan folder's layout, as `aiotedge-convert plan --out` writes it and `aiotedge run --plan`
reads it: the split (manifest.json and its segments), `plan.json`, and one node config per
board in `boards/`."""

from __future__ import annotations

#: the folder of the boards' node configs (NAME.toml, named like the node and its broker user)
PLAN_BOARDS = "boards"
#: what the planner chose and forecast
PLAN_NAME = "plan.json"
