# newsletter in a container: built from the wheel, run by a user of its own.
#   docker build -t newsletter .        (or: podman build -t newsletter .; BuildKit for --mount)
# The site (config.toml, templates/, var/) is a volume at /srv/newsletter/site: make it once
# with `newsletter init` (docs/deployment.md, "In containers"); compose.yaml runs the rest.
ARG PYTHON=3.12

# Stage 1: the wheel, from this checkout (templates, static files, migrations inside it).
FROM python:${PYTHON}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md config.toml ./
COPY newsletter newsletter
COPY templates templates
COPY examples examples
COPY subscribers/example.csv subscribers/example.csv
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the wheel installed into a venv; no compiler, no source tree, no pip in the venv.
# The wheels are mounted for the one step that installs them, so no layer keeps them.
FROM python:${PYTHON}-slim
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/newsletter \
    && python -m pip --python /opt/newsletter/bin/python install --no-cache-dir /wheels/newsletter-*.whl \
    && useradd --system --uid 10001 --home-dir /srv/newsletter --create-home newsletter \
    && install -d -o newsletter -g newsletter /srv/newsletter/site
ENV PATH=/opt/newsletter/bin:$PATH PYTHONUNBUFFERED=1
USER newsletter
WORKDIR /srv/newsletter/site
VOLUME /srv/newsletter/site
EXPOSE 8000
# The home page answers once the database is migrated and the web app is up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=4)"]
CMD ["newsletter", "serve", "--host", "0.0.0.0", "--port", "8000"]
