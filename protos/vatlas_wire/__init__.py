"""The wire contract's Python side: `vatlas_wire.v1` holds the modules generated from the `vatlas.v1` protos
(this folder's .proto files; `scripts/gen_protos.sh` regenerates them), the msgpack mirror and the op kinds.

It is its own top-level package, not part of `vatlas`, so that the client distribution (`vatlas-client`,
clients/py/pyproject.toml) ships it without the server; the proto package and every full name stay `vatlas.v1`.
"""
