"""silo: a durable, sharded background-job broker on trio.

Every effect (wall time, randomness, storage, network) reaches the code through the seams in
:mod:`silo.runtime`, so the real runtime and the deterministic simulator in :mod:`sim` drive the
same shard, broker and client code.
"""

__version__ = "0.1.0"
