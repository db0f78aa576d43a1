#!/bin/sh
# Build the image in this folder: ./build.sh [TAG] (default my-dht-node:1).
# CQKD_STACK: the cqkd-stack checkout (default: the one this folder is in);
# PYTHON: a Python with pip (default: the checkout's .venv, as the README makes it).
set -eu
cd "$(dirname "$0")"
tag=${1:-my-dht-node:1}
checkout=${CQKD_STACK:-../../..}
python=${PYTHON:-$checkout/.venv/bin/python}
base=${BASE_IMAGE:-cqkd-base:bookworm}

cp "$checkout/cqkd_stack/node/resolver.py" cqkd_resolver.py
# Wheels built on the host: the build needs no package index (and containers
# here do not trust the host's certificate authority anyway).
"$python" -m pip wheel --quiet --wheel-dir wheels \
    kademlia==2.2.3 rpcudp==5.0.1 u-msgpack-python==2.8.0
docker build --build-arg BASE_IMAGE="$base" -t "$tag" .
