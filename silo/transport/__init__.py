"""Real network transports for the :mod:`silo.rpc` seam.

- :mod:`silo.transport.grpc`: gRPC over TCP with grpclib, run on trio through trio-asyncio
  (``GrpcServer``, ``GrpcConnector``, ``GrpcChannel``).
- :mod:`silo.transport.aio`: ``open_asyncio_loop()``, the trio-asyncio loop those need.
- :mod:`silo.transport.stubs`: grpclib client stubs and server bases generated from ``proto/``
  (``silo_v1.SiloStub``, ``etcdserverpb.KvStub``, ...), sending and decoding the message classes
  of :mod:`silo.pb`. This package is the only place in silo that imports grpclib.

Importing this package imports neither grpclib nor asyncio; import the submodules explicitly.
"""
