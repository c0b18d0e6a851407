"""Transports: REST (the API in rest_api, served by uvicorn in rest_uvicorn or by aiohttp in
rest, chosen in rest_listeners) and gRPC (grpc.aio). The transports never import each other."""
