# The image every node of cluster.yaml runs Ray in (the cluster launcher's `docker:`): CUDA's base layer,
# Python 3.12 and fgray with every dependency at the version constraints.txt pins, so a node starts Ray
# without installing anything (no test extra: nodes run sweeps, not the tests). Build it from the repository
# root and push it where every node can pull it (README, "On a cluster"):
#
#   docker build -t YOUR_REGISTRY/fgray:0.1.0-ray2.60.0 .
#   docker push YOUR_REGISTRY/fgray:0.1.0-ray2.60.0
#
# The tag names fgray's and Ray's versions: a worker started hours after the head must run the same build
# (nodes with different Ray versions cannot join), so a new build gets a new tag, never `latest`.

# CUDA 12.8's base: the NVIDIA container runtime's requirements and nvidia-smi; torch's wheels bring their
# own CUDA libraries. The host needs a driver for CUDA >= 12.8 (the GPU AMI in cluster.yaml has one).
# Ubuntu 24.04: Python 3.12 on every node.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# rsync: the cluster launcher copies file mounts into the container with it; ssh: the head's autoscaler
# reaches the workers it starts over SSH. Unpinned: Ubuntu's archive keeps only each package's current
# (security-patched) version, so a pinned one breaks the build at the next update; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv rsync openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A virtual environment: Ubuntu's Python is "externally managed" (PEP 668).
RUN python3 -m venv /opt/venv

WORKDIR /opt/fgray
COPY pyproject.toml constraints.txt README.md ./
COPY fgray ./fgray
# boto3: the head's autoscaler (Ray's AWS node provider) starts and stops the workers with it.
RUN pip install -c constraints.txt . boto3
