"""The job shard: durable job lifecycle on one ordered KV store."""

from silo.shard.shard import HeartbeatResult, JobShard, ShardConfig, ShardStatistics, open_shard
from silo.shard.validation import ShardLimits

__all__ = [
    "HeartbeatResult",
    "JobShard",
    "ShardConfig",
    "ShardLimits",
    "ShardStatistics",
    "open_shard",
]
