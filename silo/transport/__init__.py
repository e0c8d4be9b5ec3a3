"""Real network transports for the :mod:`silo.rpc` seam.

- :mod:`silo.transport.grpc`: gRPC over TCP with grpclib, run on trio through trio-asyncio
  (``GrpcServer``, ``GrpcConnector``, ``GrpcChannel``).
- :mod:`silo.transport.aio`: ``open_asyncio_loop()``, the trio-asyncio loop those need.

Importing this package imports neither grpclib nor asyncio; import the submodules explicitly.
"""
