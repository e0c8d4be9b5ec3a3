"""RPC handlers: protobuf request -> node/shard operation -> protobuf response.

Transport-independent: each handler takes the encoded request and returns the encoded response,
so the grpclib server and the simulator's network serve the very same functions. Errors are
:class:`~silo.errors.SiloError` subclasses whose code becomes the RPC status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from silo.cluster.layout import check_node_id
from silo.cluster.reconcile import owners_by_node
from silo.cluster.splitting import SplitStatus
from silo.errors import (
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SiloError,
    Unavailable,
    quote,
)
from silo.model import ENQUEUE_DELETED_SINCE, ENQUEUE_HELD_BACK, NewJob
from silo.node import SiloNode
from silo.rpc import CallContext, Handler, method_path
from silo.shard import JobShard
from silo.shard.validation import (
    ShardLimits,
    check_job_id,
    check_queue_key,
    check_report_ids,
    check_request_id,
    check_task_id,
    check_tenant,
    check_worker_id,
)
from silo.wire import (
    check_wire_format,
    encode_enqueue_batch_response,
    job_to_pb,
    leased_task_to_pb,
    new_job_from_pb,
    outcome_from_pb,
    pb,
    tenant_or_default,
)

HASH_END = 1 << 64



class SiloService:
    """The ``silo.v1.Silo`` service over one node."""

    def __init__(self, node: SiloNode) -> None:
        self.node = node

    def handlers(self) -> dict[str, Handler]:
        """Handlers keyed by full gRPC method path."""
        table: dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]] = {
            "Enqueue": (pb.EnqueueRequest, self.enqueue),
            "EnqueueBatch": (pb.EnqueueBatchRequest, self.enqueue_batch),
            "GetJob": (pb.GetJobRequest, self.get_job),
            "GetJobResult": (pb.GetJobResultRequest, self.get_job_result),
            "CancelJob": (pb.JobActionRequest, self.cancel_job),
            "RestartJob": (pb.JobActionRequest, self.restart_job),
            "ExpediteJob": (pb.JobActionRequest, self.expedite_job),
            "DeleteJob": (pb.JobActionRequest, self.delete_job),
            "LeaseTasks": (pb.LeaseTasksRequest, self.lease_tasks),
            "Heartbeat": (pb.HeartbeatRequest, self.heartbeat),
            "ReportOutcome": (pb.ReportOutcomeRequest, self.report_outcome),
            "ReportOutcomes": (pb.ReportOutcomesRequest, self.report_outcomes),
            "ReportRefresh": (pb.ReportRefreshRequest, self.report_refresh),
            "GetQueue": (pb.GetQueueRequest, self.get_queue),
            "GetClusterInfo": (pb.GetClusterInfoRequest, self.get_cluster_info),
            "SplitShard": (pb.SplitShardRequest, self.split_shard),
            "GetSplitStatus": (pb.GetSplitStatusRequest, self.get_split_status),
            "ForceReleaseShard": (pb.ForceReleaseShardRequest, self.force_release_shard),
        }
        return {method_path(name): _handler(name, t, fn) for name, (t, fn) in table.items()}

    # -- routing ----------------------------------------------------------------------------

    def _tenant_shard(self, shard_id: int, tenant: str) -> JobShard:
        """The shard for a job request, checking that the tenant routes to it."""
        check_tenant(self.node.config.shard.limits, tenant)
        shard_id = self.node.route(shard_id, tenant)
        shard = self.node.shard(shard_id)
        rng = self.node.shard_map.shard_for_tenant(tenant)
        if rng.shard_id != shard_id:
            raise InvalidArgument(
                f"tenant {quote(tenant)} belongs to shard {rng.shard_id}, not shard {shard_id}"
            )
        return shard

    def _job_ref(self, ref: pb.JobRef | None) -> tuple[JobShard, str, str]:
        if ref is None:
            raise InvalidArgument("job reference is required")
        if not ref.id:
            raise InvalidArgument("job id is required")
        tenant = tenant_or_default(ref.tenant)
        check_tenant(self._limits, tenant)
        check_job_id(self._limits, ref.id)
        return self._tenant_shard(ref.shard, tenant), tenant, ref.id

    @property
    def _limits(self) -> ShardLimits:
        return self.node.config.shard.limits

    def _check_task_ref(self, worker_id: str, task_id: str) -> None:
        check_worker_id(self._limits, worker_id)
        check_task_id(self._limits, task_id)

    # -- jobs -------------------------------------------------------------------------------

    async def enqueue(self, req: pb.EnqueueRequest) -> pb.EnqueueResponse:
        check_request_id(self._limits, req.request_id)
        job = new_job_from_pb(req.job)
        shard = self._tenant_shard(req.shard, job.tenant)
        return pb.EnqueueResponse(id=await shard.enqueue(job, request_id=req.request_id))

    async def enqueue_batch(
        self, req: pb.EnqueueBatchRequest
    ) -> pb.EnqueueBatchResponse | bytes:
        """Per-job results, atomically: a job refused here (malformed, wrong shard) or by the
        shard holds back the whole batch (the others answer ABORTED, "not written")."""
        check_request_id(self._limits, req.request_id)
        if not req.jobs:
            return pb.EnqueueBatchResponse()
        limit = self._limits.max_jobs_per_batch
        if len(req.jobs) > limit:
            raise InvalidArgument(
                f"batch has {len(req.jobs)} jobs; max_jobs_per_batch is {limit}"
            )
        jobs: list[NewJob] = []
        refused: list[pb.EnqueueResult | None] = []
        targets: set[int] = set()
        for spec in req.jobs:
            try:
                job = new_job_from_pb(spec)
                targets.add(self._tenant_shard(req.shard, job.tenant).shard_id)
            except SiloError as exc:
                refused.append(pb.EnqueueResult(id=spec.id, code=int(exc.code),
                                                message=exc.message))
                continue
            jobs.append(job)
            refused.append(None)
        if len(targets) > 1:
            raise Unavailable(
                f"shard {req.shard} was split: this batch's tenants now belong to shards "
                f"{sorted(targets)}; refresh the shard map and send one batch per shard")
        shard = self.node.shard(targets.pop() if targets else req.shard)
        if any(r is not None for r in refused):
            results = [r or pb.EnqueueResult(id=spec.id, code=int(Code.ABORTED),
                                             message=ENQUEUE_HELD_BACK)
                       for r, spec in zip(refused, req.jobs, strict=True)]
            return pb.EnqueueBatchResponse(ids=[""] * len(results), results=results)
        outcomes = await shard.enqueue_each(jobs, request_id=req.request_id)
        if all(o.error is None for o in outcomes):
            # The common answer, encoded directly (the reply is then already bytes).
            return encode_enqueue_batch_response(
                [o.job_id for o in outcomes],
                [(o.job_id, ENQUEUE_DELETED_SINCE if o.deleted else "", o.existed, o.deleted)
                 for o in outcomes],
            )
        results = [
            pb.EnqueueResult(id=o.job_id, existed=o.existed, deleted=o.deleted,
                             message=ENQUEUE_DELETED_SINCE if o.deleted else "")
            if o.error is None
            else pb.EnqueueResult(id=o.job_id, code=int(_code(o.error)),
                                  message=_message(o.error))
            for o in outcomes
        ]
        written = all(o.error is None for o in outcomes)
        return pb.EnqueueBatchResponse(
            ids=[o.job_id if written else "" for o in outcomes], results=results
        )

    async def get_job(self, req: pb.GetJobRequest) -> pb.GetJobResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        view = await shard.get_job(
            tenant, job_id, include_attempts=req.include_attempts,
            max_attempts=req.max_attempts, attempts_before=req.attempts_before,
        )
        return pb.GetJobResponse(job=job_to_pb(view))

    async def get_job_result(self, req: pb.GetJobResultRequest) -> pb.GetJobResultResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        r = await shard.get_result(tenant, job_id)
        return pb.GetJobResultResponse(
            status=pb.JobStatus(int(r.status)),
            result=r.result or b"",
            error_code=r.error_code or "",
            error_data=r.error_data or b"",
            cancelled_at_ms=r.cancelled_at_ms or 0,
        )

    async def cancel_job(self, req: pb.JobActionRequest) -> pb.JobActionResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        await shard.cancel(tenant, job_id)
        return pb.JobActionResponse()

    async def restart_job(self, req: pb.JobActionRequest) -> pb.JobActionResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        await shard.restart(tenant, job_id)
        return pb.JobActionResponse()

    async def expedite_job(self, req: pb.JobActionRequest) -> pb.JobActionResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        await shard.expedite(tenant, job_id)
        return pb.JobActionResponse()

    async def delete_job(self, req: pb.JobActionRequest) -> pb.JobActionResponse:
        shard, tenant, job_id = self._job_ref(req.job)
        await shard.delete(tenant, job_id)
        return pb.JobActionResponse()

    # -- workers ----------------------------------------------------------------------------

    async def lease_tasks(self, req: pb.LeaseTasksRequest) -> pb.LeaseTasksResponse:
        """Lease tasks, sized to fit the reply (``NodeConfig.max_reply_bytes``), and apply the
        request's delivery acks (routed to each ack's shard; others are ignored)."""
        acks = [(a.shard, a.task_id) for a in req.acks]
        self.node.check_acks(acks)
        if req.all_shards:
            leased = await self.node.lease_any(
                req.worker_id, req.task_group, req.max_tasks, req.wait_ms, acks=acks
            )
            pairs = [(x.shard_id, x.task) for x in leased]
        else:
            shard = self.node.shard(req.shard)
            by_shard = self.node.acks_by_shard(acks)
            own_acks = by_shard.pop(req.shard, [])
            try:
                tasks = await shard.lease_tasks(
                    req.worker_id, req.task_group, req.max_tasks,
                    max_reply_bytes=self.node.config.max_reply_bytes, acks=own_acks,
                )
            finally:
                await self.node.apply_acks(req.worker_id, by_shard)
            pairs = [(req.shard, t) for t in tasks]
        return pb.LeaseTasksResponse(
            tasks=[leased_task_to_pb(shard_id, t) for shard_id, t in pairs],
            lease_ms=self.node.lease_ms,
        )

    async def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self._check_task_ref(req.worker_id, req.task_id)
        result = await self.node.shard_for_task(req.shard, req.task_id).heartbeat(
            req.worker_id, req.task_id, waiting=req.waiting)
        return pb.HeartbeatResponse(
            cancelled=result.cancelled, lease_expiry_ms=result.lease_expiry_ms
        )

    async def report_outcome(self, req: pb.ReportOutcomeRequest) -> pb.ReportOutcomeResponse:
        if req.outcome is None:
            raise InvalidArgument("outcome is required")
        report = outcome_from_pb(req.outcome)
        check_report_ids(self._limits, report)
        await self.node.shard_for_task(req.outcome.shard, report.task_id).report_outcome(report)
        return pb.ReportOutcomeResponse()

    async def report_outcomes(self, req: pb.ReportOutcomesRequest) -> pb.ReportOutcomesResponse:
        """Each outcome succeeds or fails on its own; the response lists one status per outcome."""
        statuses: list[pb.OutcomeStatus | None] = [None] * len(req.outcomes)
        by_shard: dict[int, list[tuple[int, Any]]] = {}
        for i, o in enumerate(req.outcomes):
            try:
                report = outcome_from_pb(o)
                check_report_ids(self._limits, report)
                shard_id = self.node.shard_for_task(o.shard, report.task_id).shard_id
            except SiloError as exc:
                statuses[i] = pb.OutcomeStatus(code=int(exc.code), message=exc.message)
                continue
            by_shard.setdefault(shard_id, []).append((i, report))
        for shard_id in sorted(by_shard):
            items = by_shard[shard_id]
            errors = await self.node.shard(shard_id).report_outcomes([r for _, r in items])
            for (i, _), err in zip(items, errors, strict=True):
                statuses[i] = (
                    pb.OutcomeStatus()
                    if err is None
                    else pb.OutcomeStatus(code=int(err.code), message=err.message)
                )
        return pb.ReportOutcomesResponse(statuses=[s or pb.OutcomeStatus() for s in statuses])

    async def report_refresh(self, req: pb.ReportRefreshRequest) -> pb.ReportRefreshResponse:
        import betterproto2

        self._check_task_ref(req.worker_id, req.task_id)
        which, value = betterproto2.which_one_of(req, "result")
        shard = self.node.shard_for_task(req.shard, req.task_id)
        if which == "new_max":
            await shard.report_refresh(req.worker_id, req.task_id, value)
        elif which == "failure":
            await shard.report_refresh(req.worker_id, req.task_id, None, value.code)
        else:
            raise InvalidArgument("a refresh report needs new_max or failure")
        return pb.ReportRefreshResponse()

    # -- limits -----------------------------------------------------------------------------

    async def get_queue(self, req: pb.GetQueueRequest) -> pb.GetQueueResponse:
        tenant = tenant_or_default(req.tenant)
        shard = self._tenant_shard(req.shard, tenant)
        if not req.key:
            raise InvalidArgument("queue key is required")
        check_queue_key(self._limits, req.key)
        q = shard.queue_info(tenant, req.key, max_listed=min(req.max_listed or 100, 1000))
        return pb.GetQueueResponse(
            tenant=q["tenant"],
            key=q["queue"],
            max_concurrency=q["max_concurrency"],
            floating=q["floating"],
            holders=q["holders"],
            holder_task_ids=q["holder_task_ids"],
            waiting=q["waiting"],
            first_waiting=[
                pb.WaitingRequest(
                    job_id=w["job_id"], attempt=w["attempt"], priority=w["priority"],
                    due_ms=w["due_ms"],
                )
                for w in q["first_waiting"]
            ],
            next_refresh_ms=q["next_refresh_ms"] or 0,
            refresh_backoff_ms=q["refresh_backoff_ms"] or 0,
        )

    # -- cluster ----------------------------------------------------------------------------

    async def split_shard(self, req: pb.SplitShardRequest) -> pb.SplitShardResponse:
        """Split ``req.shard`` at ``req.at_hash`` (0: the median tenant hash of its data);
        answers once both children serve. In a cluster only the parent's owner splits it
        (another node answers "shard not found" with the owner's address)."""
        if req.at_hash >= HASH_END:
            raise InvalidArgument(f"at_hash {req.at_hash} is not below 2**64")
        if self.node.clustered and req.shard not in self.node.shards:
            self.node.shard(req.shard)  # raises the routing answer
        record = await self.node.splitter.request(req.shard, req.at_hash or None)
        return pb.SplitShardResponse(
            split=split_status_to_pb(self.node.splitter.status(record.parent)[0]))

    async def get_split_status(
        self, req: pb.GetSplitStatusRequest
    ) -> pb.GetSplitStatusResponse:
        if self.node.clustered:
            await self.node.splitter.load()  # the records are the cluster's, in etcd
        return pb.GetSplitStatusResponse(
            splits=[split_status_to_pb(s) for s in self.node.splitter.status(req.shard)])

    async def force_release_shard(
        self, req: pb.ForceReleaseShardRequest
    ) -> pb.ForceReleaseShardResponse:
        """Delete ``req.shard``'s ownership key (only if it names ``req.owner``, when given) so
        that a live node takes the shard: for a node that is gone for good. Refused for a shard
        whose owner is a live member (it would be served twice until that node noticed)."""
        node = self.node
        if node.reconciler is None:
            raise FailedPrecondition("force-release needs coordination etcd")
        if req.owner:
            check_node_id(req.owner)
        coord = node.reconciler.coordinator
        current = await coord.read_shard_map()
        if current.map is None or current.map.get(req.shard) is None:
            raise NotFound(f"shard not found: {req.shard} is not in the shard map")
        owners = await coord.owners()
        owner = owners.get(req.shard)
        if owner is None:
            return pb.ForceReleaseShardResponse(released=False)
        if req.owner and owner != req.owner:
            raise FailedPrecondition(f"shard {req.shard} is owned by {owner}, not {req.owner}")
        members = await coord.members()
        if owner in members:
            raise FailedPrecondition(
                f"shard {req.shard} is owned by {owner}, a live member; stop that node first")
        released = await coord.force_release(req.shard, owner)
        node.reconciler.wake()
        return pb.ForceReleaseShardResponse(released=released, previous_owner=owner)

    async def get_cluster_info(self, req: pb.GetClusterInfoRequest) -> pb.GetClusterInfoResponse:
        node = self.node
        if node.clustered:
            return self._clustered_info()
        shards = []
        for rng in node.shard_map.shards:
            local = rng.shard_id in node.shards
            shards.append(
                pb.ShardInfo(
                    id=rng.shard_id,
                    range_start=rng.start,
                    range_end=rng.end % HASH_END,
                    range_end_max=rng.end == HASH_END,
                    owner_node=node.config.node_id if local else "",
                    owner_address=node.advertise_address if local else "",
                )
            )
        return pb.GetClusterInfoResponse(
            map_version=node.shard_map.version, shards=shards, node_id=node.config.node_id,
            nodes=[pb.NodeInfo(node_id=node.config.node_id, address=node.advertise_address,
                               shards=sorted(node.shards))],
            coordination="none",
        )

    def _clustered_info(self) -> pb.GetClusterInfoResponse:
        """The cluster as this node's reconcile loop last read it (UNAVAILABLE before the
        first reading)."""
        node = self.node
        view = node.view
        if view is None:
            raise Unavailable(f"node {node.config.node_id} has not read the cluster yet")
        shards = []
        for rng in view.shard_map.shards:
            owner = view.owners.get(rng.shard_id, "")
            shards.append(pb.ShardInfo(
                id=rng.shard_id, range_start=rng.start, range_end=rng.end % HASH_END,
                range_end_max=rng.end == HASH_END, owner_node=owner,
                owner_address=view.owner_address(rng.shard_id) or "",
            ))
        held = owners_by_node(view.owners)
        nodes = [pb.NodeInfo(node_id=m, address=info.address, shards=held.get(m, []))
                 for m, info in sorted(view.members.items())]
        return pb.GetClusterInfoResponse(
            map_version=view.shard_map.version, shards=shards, node_id=node.config.node_id,
            nodes=nodes, coordination="etcd",
        )


def split_status_to_pb(status: SplitStatus) -> pb.SplitStatus:
    r = status.record
    children = []
    for rng, child in zip(r.children, status.children, strict=True):
        children.append(pb.SplitChildStatus(
            shard=rng.shard_id, range_start=rng.start, range_end=rng.end % HASH_END,
            range_end_max=rng.end == HASH_END, cleanup_stage=child.stage,
            keys_deleted=child.deleted, keys_examined=child.examined, open=child.open,
        ))
    return pb.SplitStatus(
        parent=r.parent, phase=r.phase.label, split_hash=r.split_hash,
        range_start=r.parent_start, range_end=r.parent_end % HASH_END,
        range_end_max=r.parent_end == HASH_END, children=children,
        requested_at_ms=r.requested_at_ms, changed_at_ms=r.changed_at_ms, reason=r.reason,
        map_version=r.map_version,
    )


def _code(error: Exception) -> Code:
    return error.code if isinstance(error, SiloError) else Code.INTERNAL


def _message(error: Exception) -> str:
    return error.message if isinstance(error, SiloError) else "internal error"


def _handler(
    name: str, request_type: type[Any], fn: Callable[[Any], Awaitable[Any]]
) -> Handler:
    async def handle(data: bytes, ctx: CallContext) -> bytes:
        try:
            check_wire_format(data, request_type)
            request = request_type.parse(data)
        except Exception as exc:
            raise InvalidArgument(f"malformed {name} request: {quote(str(exc))}") from exc
        response = await fn(request)
        return bytes(response)

    handle.__name__ = f"handle_{name}"
    return handle

