# syntax=docker/dockerfile:1
# plprobe agent image: client or provider role, chosen by the mounted config.
#
#   docker build -t plprobe .
#   docker run --cap-add NET_RAW --network host \
#     -v /etc/plprobe:/etc/plprobe:ro -e PLPROBE_KEY="$(cat key)" plprobe
#
# Runs as a non-root user. Only NET_RAW is needed, and only for SYN probes and the sniffer:
# without it those probes fall back to TCP connects (and say so in a metric). plprobe refuses
# to run as root unless --allow-root / PLPROBE_ALLOW_ROOT=1, and drops CAP_NET_RAW after start
# when neither SYN probes nor the sniffer are configured.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Same install as `make`: the package from pyproject.toml, built once into wheels.
COPY pyproject.toml README.md ./
COPY agent ./agent
# agent/lab/topologies links to configs/lab: the lab topologies ship inside the package
COPY configs ./configs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[aws]"

FROM python:3.11-slim-bookworm
# tcpdump + libpcap: scapy compiles BPF filter strings through them (agent/observe/sniffer.py).
# libcap2-bin: setcap, so the non-root user can use NET_RAW when the container grants it.
# Debian's security updates replace pinned versions; the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tcpdump libpcap0.8 libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin plprobe
COPY --from=build /wheels /wheels
# --no-index from the wheels built above: the versions are the ones just built.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels "plprobe[aws]" \
 && rm -rf /wheels \
 && setcap cap_net_raw+ep "$(readlink -f /usr/local/bin/python3)"
USER 10001:10001
EXPOSE 9720
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9720/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["plprobe"]
CMD ["run", "--config", "/etc/plprobe/plprobe.yaml"]
