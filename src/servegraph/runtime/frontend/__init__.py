"""Front-end workers (``servegraph serve --frontend-workers N``).

N processes accept HTTP and gRPC on the server's ports (SO_REUSEPORT) and decode and encode
requests; the one model process keeps the batcher and the models. Tensors cross between them
in shared memory (``arena``), small descriptors over a unix socket (``link``). ``pool`` is the
model process's side, ``worker`` the front end's.
"""
