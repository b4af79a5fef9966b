# netdiff's web app on a CPU, as one container: `docker compose up`, then http://127.0.0.1:8501.
# The same set-up as scripts/setup.sh (tshark and tcpreplay for validation, the pinned versions of
# constraints.txt, a CPU build of torch), without chromium (only the browser test needs it).
FROM python:3.11-slim-bookworm

RUN echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tshark tcpreplay \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/netdiff
COPY pyproject.toml constraints.txt README.md ./
COPY netdiff ./netdiff
COPY protocol_rules ./protocol_rules
COPY configs ./configs
# torch from PyTorch's CPU index (PyPI's default wheel is a multi-GB CUDA build); the version
# scripts/setup.sh installs, or another with --build-arg TORCH_SPEC=torch==X
ARG TORCH_SPEC=torch==2.13.0
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "$TORCH_SPEC" \
    && pip install --no-cache-dir -c constraints.txt ".[app]"

# Data stays in the mounted workspace; the app binds to every interface inside the container
# and compose publishes it on the host's loopback only.
VOLUME /workspace
EXPOSE 8501
CMD ["netdiff", "app", "--host", "0.0.0.0", "--port", "8501", "--workspace", "/workspace"]
