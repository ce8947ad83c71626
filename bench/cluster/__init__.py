"""Emulating a cluster of boards on one machine (CPU quotas, network namespaces, shaped links)."""
