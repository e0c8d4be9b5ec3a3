"""The job shard: durable job lifecycle on one ordered KV store."""

from silo.shard.limits import ShardLimits
from silo.shard.shard import HeartbeatResult, JobShard, ShardConfig, ShardStatistics, open_shard

__all__ = [
    "HeartbeatResult",
    "JobShard",
    "ShardConfig",
    "ShardLimits",
    "ShardStatistics",
    "open_shard",
]
