"""Transports: REST (aiohttp) and gRPC (grpc.aio). They never import each other."""
