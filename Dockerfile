# One image for every FedEngine service; the container's command picks the service.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Fashion-MNIST (31 MB) for tasks with "dataset": "fashion_mnist": Debian's package puts it in
# /usr/share/datasets/fashion-mnist, where fedcommon.datasets looks when the venv has none.
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

# torch is pinned; pass e.g. --build-arg TORCH_PIP_ARGS="--index-url <CPU wheel index>" to get
# the CPU build instead of the default (CUDA) one.
ARG TORCH_PIP_ARGS=""
RUN pip install torch==2.13.0 ${TORCH_PIP_ARGS}

COPY constraints.txt ./
COPY libs/fedcommon libs/fedcommon
COPY libs/fedprivacy libs/fedprivacy
COPY libs/feddevice libs/feddevice
COPY services services
COPY cli cli
RUN pip install -c constraints.txt "./libs/fedcommon[service,torch,data]" "./libs/fedprivacy[accounting]" ./libs/feddevice \
      ./services/registry \
      ./services/coordinator ./services/aggregator ./services/simulator ./services/gateway \
      ./services/privacy ./cli

RUN useradd --create-home --uid 10001 fedengine
USER fedengine
ENV FEDENGINE_HOME=/home/fedengine/.fedengine
CMD ["python", "-m", "fedengine_gateway"]
