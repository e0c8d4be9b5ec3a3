"""Txn savepoints: one item of a batch operation can be undone alone."""

from __future__ import annotations

from silo.shard.txn import Txn


def test_rollback_undoes_only_what_followed_the_savepoint() -> None:
    txn = Txn(None, 0)  # type: ignore[arg-type] - no reads here
    txn.put(b"a", b"1")
    txn.bump(b"c", 1)
    sp = txn.savepoint()
    txn.put(b"a", b"2")
    txn.delete(b"b")
    txn.put(b"d", b"4")
    txn.bump(b"c", 5)
    txn.emit("x")
    txn.regrant.append(("t", "q"))
    txn.rollback(sp)
    assert txn.ops == {b"a": b"1"}
    assert txn.counter_deltas == {b"c": 1}
    assert txn.events == [] and txn.regrant == []
    txn.put(b"e", b"5")
    assert txn.ops == {b"a": b"1", b"e": b"5"}
