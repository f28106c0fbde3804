# cvae-digits: the REST API (default command) and the trainer (`python -m training`), CPU-only by default.
#
#   docker build -t cvae-digits .                                             # CPU torch from PyTorch's CPU index
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t cvae-digits:cuda .
#   docker build --build-arg TORCH_INDEX_URL= -t cvae-digits:cuda .          # empty: PyPI (CUDA builds on Linux)
#
# Offline builds: put wheels into .ci/wheels/ (ignored by git); pip looks there first. The CI drops the local CPU
# torch wheel there and builds with TORCH_INDEX_URL= and TORCH_SPEC=torch==2.13.0+cpu.
# Classic-builder compatible on purpose: no BuildKit-only syntax.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with torch and the project (no dev tools) --------------------------------------
FROM ${PYTHON_IMAGE} AS build

# The torch requirement and where it comes from (the lock leaves torch out: its build is the image's choice). Keep
# TORCH_SPEC in step with the pin in pyproject.toml.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheels

# binutils for `strip` in the slimming step below (this stage is thrown away: the image never carries it). Not pinned:
# any version strips, and the base image's Debian release decides which exists.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv

# REQUIRE_CUDA=1 (the compose `train` image): the build must install a CUDA build of torch, and fails otherwise.
# A CPU wheel in the local wheel folder (torch-X+cpu, as .ci/compose leaves it) satisfies torch==X and sorts above
# PyPI's X, so for a plain torch==X pin it is excluded (torch==X,!=X+cpu); whatever is installed is then checked.
ARG REQUIRE_CUDA=

# torch first, in its own layer: it is most of the image and changes least often.
COPY .ci/wheels/ /wheels/
RUN if [ -n "$TORCH_INDEX_URL" ]; then set -- --index-url "$TORCH_INDEX_URL"; else set --; fi \
    && spec="$TORCH_SPEC" \
    && case "$REQUIRE_CUDA:$spec" in ?*:torch==*+*|:*) ;; ?*:torch==*) spec="$spec,!=${spec#torch==}+cpu" ;; esac \
    && /opt/venv/bin/pip install --no-cache-dir "$@" "$spec" \
    && if [ -n "$REQUIRE_CUDA" ]; then /opt/venv/bin/python -c "import sys, torch; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda); \
sys.exit(None if torch.version.cuda else f'REQUIRE_CUDA: torch {torch.__version__} is a CPU build (torch.version.cuda \
is None): remove CPU torch wheels from .ci/wheels, or set TORCH_SPEC / TORCH_INDEX_URL to a CUDA build')"; fi

# Every other package at the version requirements/app.txt locks, checked against its hashes: the service's and the
# trainer's (tqdm) dependencies, without the dev tools. Then the project, non-editable, without dependencies (built
# with the locked setuptools), and `pip check`: the lock, torch and pyproject.toml agree.
WORKDIR /src
COPY requirements/app.txt requirements/app.txt
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements/app.txt
COPY pyproject.toml README.md ./
COPY model/ model/
COPY training/ training/
COPY app/ app/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import torch, model, app, training; print('torch', torch.__version__)"

# Slimming: what the torch wheel (and the venv) ship that neither `python -m app` nor `python -m training` loads.
# Each removal's measured size is in docs/docker.md; .ci/compose serves, encodes, generates and trains
# in the slimmed image, and fails when the image exceeds 900 MB.
#   torch/test: C++ test binaries
#   torch/include, torch/share, torch/lib/libshm*/: C++ headers and CMake files (for building extensions)
#   torch/bin except torch_shm_manager: C++ test binaries and protoc (torch_shm_manager serves torch.multiprocessing)
#   torch/lib/*test*.so, libbackend_with_compiler.so, libaoti_custom_ops.so: loaded only by torch's own tests
#   strip --strip-unneeded torch/lib/*.so: the static symbol tables (the dynamic ones stay: nothing links
#     differently; C++ backtraces lose the names of internal functions)
#   every `tests` folder (sympy's, numpy's, ...): the packages' own test suites, which no package imports
#   pip, setuptools: installing is done; the image never installs anything
RUN set -eu; \
    sp="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
    find "$sp/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +; \
    rm -rf "$sp/torch/test" "$sp/torch/include" "$sp/torch/share" "$sp/torch/lib/libshm" \
        "$sp/torch/lib/libshm_windows" "$sp"/torch/lib/*test*.so "$sp/torch/lib/libbackend_with_compiler.so" \
        "$sp/torch/lib/libaoti_custom_ops.so"; \
    find "$sp" -type d -name tests -prune -exec rm -rf {} +; \
    strip --strip-unneeded "$sp"/torch/lib/libtorch*.so "$sp"/torch/lib/libc10.so "$sp"/torch/lib/libshm.so; \
    /opt/venv/bin/python -m pip uninstall --quiet --yes setuptools pip; \
    /opt/venv/bin/python -c "import torch, torch.export._trace, model, app, training; print('slimmed: torch', torch.__version__)"

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CVAE_MODEL_DIR=/app/artifacts/default

# An unprivileged user. /models, /data and /runs exist and belong to it so that named volumes mounted there (the compose
# `train` service) start out writable by it.
RUN groupadd --gid 10001 cvae \
    && useradd --uid 10001 --gid cvae --create-home --home-dir /home/cvae --shell /usr/sbin/nologin cvae \
    && mkdir -p /models /data /runs \
    && chown cvae:cvae /models /data /runs

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The default model shipped with the image (the app is installed non-editable, hence CVAE_MODEL_DIR above).
COPY artifacts/default/ /app/artifacts/default/
# The Fashion-MNIST model, served with CVAE_MODEL_DIR=/app/artifacts/fashion CVAE_MODEL_NAME=fashion, or beside the
# digits with CVAE_MODELS=digits=/app/artifacts/default,fashion=/app/artifacts/fashion.
COPY artifacts/fashion/ /app/artifacts/fashion/

USER 10001:10001
EXPOSE 8000

# Ready = model loaded and warmed up. python's urllib: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

# uvicorn finishes in-flight requests on SIGTERM. Run with an init (`docker run --init`, compose `init: true`).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
