# postern and an example app in a container image, in two stages:
#
#   docker build -t postern-example .
#   docker run --rm -p 127.0.0.1:3031:3031 postern-example
#   # then, on the host: postern request uwsgi://127.0.0.1:3031/   (or nginx's uwsgi_pass)
#
# The build stage compiles postern against the image's own CPython 3.11, whose shared
# libpython (/usr/local/lib/libpython3.11.so.1.0) the binary finds at run time through
# the rpath it was linked with. The runtime stage is the same CPython's slim image, so
# that library is at the same path. For your own project, replace the example's lines
# at the end with your code and requirements, and keep the ENTRYPOINT.
#
# Every file COPYed here exists in the repo, and the build commands are the README's
# (protocol-tests/tests/deploy.rs checks both).

FROM python:3.11-bookworm AS build
# Rust from rustup, the official installer; the stable toolchain.
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
# Build against this image's Python (the README: "Build against another Python with
# PYO3_PYTHON=...").
ENV PYO3_PYTHON=/usr/local/bin/python3.11
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# A workspace member: cargo reads its manifest even when building postern alone.
COPY protocol-tests/Cargo.toml ./protocol-tests/Cargo.toml
COPY protocol-tests/src ./protocol-tests/src
RUN cargo build --release && ./target/release/postern --version

FROM python:3.11-slim-bookworm
COPY --from=build /src/target/release/postern /usr/local/bin/postern
# An unprivileged user with a fixed id (deploy/kubernetes runs it as 10001).
RUN groupadd --system --gid 10001 postern \
    && useradd --system --uid 10001 --gid postern --no-create-home postern
WORKDIR /app
COPY examples/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY examples ./examples
USER postern
# uwsgi on TCP, for nginx on the host or in another container. In Kubernetes
# (deploy/kubernetes/postern.yaml) the arguments are replaced by a Unix socket in a
# volume shared with the nginx container.
EXPOSE 3031
ENTRYPOINT ["postern"]
CMD ["examples/flask_app.py:app", "--uwsgi", "0.0.0.0:3031", "--workers", "2", "--threads", "4"]
