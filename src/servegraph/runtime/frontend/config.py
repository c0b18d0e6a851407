"""What the model process tells a worker it starts (one JSON argument)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from servegraph.runtime.config import ServerSettings


class WorkerConfig(BaseModel):
    index: int = Field(ge=0, description="The worker's number, as metrics and logs name it.")
    parent_pid: int = Field(ge=1, description="The model process: the worker exits when it goes.")
    log_level: str = Field("INFO", description="The model process's logging level.")
    settings: ServerSettings = Field(description="The server's settings (host, ports, limits).")
    http_port: int = Field(ge=1, le=65535, description="The HTTP port, already bound by the model process.")
    grpc_port: int = Field(ge=1, le=65535, description="The gRPC port, already bound by the model process.")
    link_fd: int = Field(ge=0, description="The worker's end of its socket pair to the model process.")
    arena_fd: int = Field(ge=0, description="The worker's shared memory (a memfd).")
    slots: int = Field(ge=1, description="Requests that can carry tensors in shared memory at once.")
    slot_bytes: int = Field(ge=4096, description="Bytes per slot and direction; larger tensors go inline.")
    max_inflight: int = Field(ge=1, description="Requests one worker forwards at once; more are refused (503).")
    private_http: str = Field(description="The model process's HTTP unix socket, for every non-infer route.")
    private_grpc: str = Field(description="The model process's gRPC address (unix:...), for every non-infer RPC.")
    forward_headers: bool = Field(
        description="Send request headers along (a graph node may route on them; a model never reads them)."
    )
