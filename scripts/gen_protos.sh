#!/usr/bin/env bash
# Regenerate the Python gRPC/protobuf modules from protos/ (the wire contract's single source of truth).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/vatlas_wire/v1/*.proto
