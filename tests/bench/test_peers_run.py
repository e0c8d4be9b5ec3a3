"""The peers benchmark end to end with a tiny workload: a real PostgreSQL cluster, pgqueuer's
and silo's worker CLIs. Skipped where PostgreSQL or the ``bench`` extra is not installed."""

from __future__ import annotations

import glob
import os

import pytest

from silo.bench.pgcluster import PostgresNotFound, find_postgres_bin


def _have_postgres() -> bool:
    try:
        find_postgres_bin()
    except PostgresNotFound:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_postgres(),
                                reason="PostgreSQL (Debian postgresql-15) is not installed")


def _temp_dirs() -> set[str]:
    import tempfile

    root = tempfile.gettempdir()
    return set(glob.glob(os.path.join(root, "silo-bench-*")))


def test_tiny_run_is_exactly_once_and_leaves_nothing_behind() -> None:
    pytest.importorskip("pgqueuer")
    pytest.importorskip("asyncpg")
    from silo.bench.peers import PeersConfig, run_peers
    from silo.bench.peers_report import format_table

    before = _temp_dirs()
    record = run_peers(PeersConfig(jobs=30, rounds=1, batch=10, workers=2))
    assert record["exactly_once"] == {"pgqueuer": True, "silo": True}, format_table(record)
    assert {r["library"] for r in record["rounds"]} == {"pgqueuer", "silo"}
    for lib in ("pgqueuer", "silo"):
        med = record["median"][lib]
        assert all(med[m] and med[m] > 0 for m in ("single_per_s", "bulk_per_s",
                                                   "processing_per_s")), med
    assert record["median"]["ceilings"]["durable_call_per_s"] > 0
    assert "silo/pgqueuer" in format_table(record)
    assert _temp_dirs() <= before


def test_cluster_runs_with_durable_defaults_and_is_removed_on_error() -> None:
    import asyncio

    asyncpg = pytest.importorskip("asyncpg")
    from silo.bench.pgcluster import postgres_cluster

    async def settings(dsn: str) -> tuple[str, str]:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return (await conn.fetchval("SHOW fsync"),
                    await conn.fetchval("SHOW synchronous_commit"))
        finally:
            await conn.close()

    data_dir = ""
    with pytest.raises(RuntimeError, match="boom"), postgres_cluster() as cluster:
        data_dir = cluster.data_dir
        assert asyncio.run(settings(cluster.dsn())) == ("on", "on")
        raise RuntimeError("boom")
    assert data_dir and not os.path.exists(data_dir)
