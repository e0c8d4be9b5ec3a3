"""Deterministic simulation of silo (DESIGN §7).

The real node (``open_node`` + ``SiloService`` handlers), the real ``SiloClient`` and the real
``Worker`` run on simulated seams inside one ``trio.run`` with a ``MockClock`` (autojump) and
trio's deterministic scheduling seeded from the scenario seed, so one seed is one interleaving.

- :mod:`sim.clock`: per-host wall clocks (fixed epoch + trio time + a jumpable offset);
- :mod:`sim.disk`: :class:`~sim.disk.MemoryDisk`, LevelDB-like crash semantics and write errors;
- :mod:`sim.network`: encoded protobuf requests/responses between named hosts with seeded
  latency, loss, duplication, reordering and partitions;
- :mod:`sim.faults`: named fault points, rates and counts; the run's BUGGIFY points and probes;
- :mod:`sim.hosts`: node hosts (start, crash, clean stop, restart on the same disk and node id),
  client hosts, workers;
- :mod:`sim.cluster_nodes`: a cluster of real nodes (coordination etcd, the etcd model of
  :mod:`sim.etcd`) over one shared data root, and invariant 10 on their store opens;
  :mod:`sim.cluster_workload`: the standard workload on such a cluster, with cluster moves;
  :mod:`sim.cluster`: the reconcile loops of ``cluster_membership`` with stand-in shards;
- :mod:`sim.checkers` and :mod:`sim.audit`: invariant checkers fed by the durable event stream,
  and the audit of durable shard images;
- :mod:`sim.simulator`: the world of one run, its fault phase, healing, liveness phase and final
  audit; :mod:`sim.workload`: the workload drawer, job mix, producers, handler and operator
  scenarios share; :mod:`sim.actors`: zombie and vanishing workers;
- :mod:`sim.runner`: one seed in a fresh ``trio.run``; :mod:`sim.cli`: the ``silo-sim`` command.

The simulator never imports grpclib or asyncio.
"""
