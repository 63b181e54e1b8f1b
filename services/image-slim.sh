#!/bin/sh
# The Bento's docker.setup_script: runs as root after the Python packages are installed.
# BentoML's Dockerfile installs build-essential, git and gnupg2 for source builds; every
# requirement of this service is a wheel, so the running service needs none of them, nor
# uv and pip (they only install) or the download caches. buildah commits the build as one
# layer, so what is removed here is not shipped (tests/services/test_image.py checks).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get purge -y -q --auto-remove \
    -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false \
    build-essential git gnupg2 python3-pip >/dev/null
rm -rf /usr/local/bin/uv /usr/local/bin/uvx /usr/local/lib/python3*/dist-packages/uv* \
    /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /root/.cache /tmp/*
