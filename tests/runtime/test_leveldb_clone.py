"""The LevelDB adapter's clone: hard links for table files, copies for the rest."""

from __future__ import annotations

from silo.runtime.disk import WriteBatch
from silo.runtime.leveldb import LevelDBDisk, clone_leveldb_dir


async def test_clone_hard_links_table_files(tmp_path) -> None:  # noqa: ANN001
    """LevelDB's immutable table files are linked, not copied; the rest is copied."""
    disk = LevelDBDisk()
    src = str(tmp_path / "src")
    store = await disk.open(src)
    batch = WriteBatch()
    for i in range(5000):
        batch.put(b"k%06d" % i, b"x" * 200)
    await store.write(batch)
    await store.compact_range(None, None)
    await store.close()
    counts = clone_leveldb_dir(src, str(tmp_path / "dst"))
    assert counts["linked"] >= 1 and counts["copied"] >= 2
    tables = [p for p in (tmp_path / "dst").iterdir() if p.suffix in (".ldb", ".sst")]
    assert tables and all(p.stat().st_nlink == 2 for p in tables)
    assert not (tmp_path / "dst" / "LOCK").exists()
    copy = await disk.open(str(tmp_path / "dst"))
    assert len(await copy.scan(b"", None)) == 5000
    await copy.close()
