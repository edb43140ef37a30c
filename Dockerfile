# bitext-miner: one image for the worker (default command), the CLI and the migrations.
#
#   docker build -t bitext-miner .
#   docker run --rm bitext-miner miner --help
#
# torch is the CPU build (the CUDA wheels are several GB). For a GPU worker image pass the CUDA
# wheel index matching the host driver, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MINER_HOME=/home/miner/.miner \
    MINER_ARTIFACTS=/artifacts

# Non-root user; the folders that compose mounts named volumes on are created here so the volumes
# start out owned by that user.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin miner \
    && mkdir -p /app /artifacts /data /home/miner/.miner /home/miner/.cache/huggingface /run/miner-cores \
    && chown -R miner:miner /app /artifacts /data /home/miner /run/miner-cores

WORKDIR /app

# 1. torch alone (the biggest layer, rebuilt only when the pin changes). Keep the pin equal to
#    pyproject.toml's (tests/test_compose.py checks it).
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# 2. The other dependencies, read from pyproject.toml (cached until pyproject.toml changes).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3. The project itself, installed exactly as pyproject.toml declares it.
COPY alembic.ini ./
COPY miner/ miner/
COPY workers/ workers/
COPY migrations/ migrations/
COPY examples/ examples/
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" . \
    && pip check \
    && chown -R miner:miner /app

USER miner

# A worker consuming both queues; override for the CLI (`miner ...`) or `miner db upgrade`.
CMD ["miner", "worker"]
