#!/usr/bin/env bash
# Source on the GPU device machine (repo root as working directory):
#   . scripts/device_env.sh
# Installs the carried cp312 wheels from .whl/ into /tmp/site and lays the repo's folders out as the installed
# package would (/tmp/pkg/vatlas/{models,server,webapp}, /tmp/pkg/vatlas_wire, /tmp/pkg/vatlas_client), then
# changes to /tmp so ./vatlas does not shadow it.
repo="$PWD"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$repo"/.whl/*.whl || return 1
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/vatlas
cp -r "$repo"/vatlas/. /tmp/pkg/vatlas/
ln -s "$repo/models" /tmp/pkg/vatlas/models
ln -s "$repo/server" /tmp/pkg/vatlas/server
ln -s "$repo/clients/web/dist" /tmp/pkg/vatlas/webapp
ln -s "$repo/clients/py/vatlas_client" /tmp/pkg/vatlas_client
ln -s "$repo/protos/vatlas_wire" /tmp/pkg/vatlas_wire
export PYTHONPATH=/tmp/site:/tmp/pkg
export VATLAS_REPO="$repo"
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m vatlas.cli "$@"\n' > /tmp/bin/vatlas && chmod +x /tmp/bin/vatlas
export PATH=/tmp/bin:$PATH
cd /tmp || return 1
