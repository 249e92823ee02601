# syntax=docker/dockerfile:1
# iobot: Slack and Discord bots for the IO Intelligence API.
# Build:  docker build -t iobot .
# Run:    docker run --env-file .env -p 3000:3000 -v iobot-data:/data iobot

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/iobot
COPY pyproject.toml README.md ./
COPY core ./core
COPY adapters ./adapters
COPY bots ./bots
COPY emulator ./emulator
RUN /opt/iobot/bin/pip install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 iobot \
    && useradd --system --uid 10001 --gid iobot --home-dir /data --no-create-home iobot \
    && mkdir /data && chown iobot:iobot /data
COPY --from=build /opt/iobot /opt/iobot
ENV PATH=/opt/iobot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IOBOT_HOST=0.0.0.0 \
    IOBOT_PORT=3000 \
    IOBOT_DATABASE_URL=sqlite:////data/iobot.sqlite3
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['IOBOT_PORT'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["iobot"]
CMD ["run"]
