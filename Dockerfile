# syntax=docker/dockerfile:1
#
# imgbuild in a container: patches images as an ordinary user, so it needs no --privileged,
# no /dev mount, no loop device and no capability.
#
#   docker build -t imgbuild .
#   docker run --rm --user "$(id -u):$(id -g)" --cap-drop ALL --security-opt no-new-privileges \
#       -v "$PWD:/work" imgbuild --board rpi4 --base base.img.xz --config imgbuild.toml --out dist/
#
# --user keeps the outputs owned by the caller; downloads are cached in /work/.cache
# (XDG_CACHE_HOME). Without --user the container runs as the unprivileged user `imgbuild`
# (uid 10001), which must be able to write to the mounted directory.
#
# Stages: `runtime` (Debian + the binary's runtime dependencies), `prebuilt` (runtime + a binary
# built outside: `docker build --target prebuilt -f Dockerfile DIR`, where DIR holds only the
# binary, named `imgbuild`; tests/docker/run.sh does this with the workspace's debug build), then
# `builder` (compiles from source) and the default, last stage (runtime + the compiled binary).
# `prebuilt` comes before `builder` so that `--target prebuilt` never needs the Rust image, not
# even with the legacy builder (it builds every stage up to the target; BuildKit only the ones
# the target needs). A default legacy build passes through `prebuilt` too, copying the source
# directory imgbuild/ there; the final stage does not use it.

# --- runtime: what the binary needs at run time ------------------------------------------------
FROM debian:bookworm-slim AS runtime

# Runtime libraries of the binary (ldd): libext2fs + libcom_err (e2fsprogs, linked dynamically,
# LGPL); liblzma and zstd are linked statically. ca-certificates: HTTPS to AWS and to base-image
# downloads. e2fsprogs (e2fsck) and dosfstools (fsck.vfat) check the base's file systems before
# anything is written. tini is PID 1 (see ENTRYPOINT).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libext2fs2 libcom-err2 ca-certificates e2fsprogs dosfstools tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /work --shell /usr/sbin/nologin imgbuild

ENV XDG_CACHE_HOME=/work/.cache
WORKDIR /work
# tini as PID 1 rather than imgbuild itself: the kernel drops every signal PID 1 has no handler
# for, so `docker stop`, Ctrl-C (SIGINT) and SIGHUP would otherwise depend on imgbuild installing
# a handler for each of them; tini forwards them to imgbuild, which then behaves exactly as it does
# outside a container (its SIGINT/SIGTERM handler removes the working copy and temp outputs), and
# tini reaps the e2fsck/fsck.vfat children and any orphan. tini exits with imgbuild's status
# (128 + signal number when a signal ended it).
ENTRYPOINT ["/usr/bin/tini", "--", "imgbuild"]
CMD ["--help"]
USER 10001:10001

# --- prebuilt: runtime + a binary built outside the container ----------------------------------
FROM runtime AS prebuilt
COPY imgbuild /usr/local/bin/imgbuild

# --- builder: compile from source ---------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# libext2fs is linked dynamically (LGPL); bindgen needs libclang to read its headers.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libext2fs-dev comerr-dev pkg-config clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cargo build --release --locked -p imgbuild \
 && install -D -m 0755 target/release/imgbuild /out/imgbuild

# --- default: runtime + the binary compiled above ------------------------------------------------
FROM runtime
COPY --from=builder /out/imgbuild /usr/local/bin/imgbuild
