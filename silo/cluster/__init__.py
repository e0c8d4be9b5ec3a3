"""Cluster: the shard map, tenant routing and (later) membership and ownership."""
