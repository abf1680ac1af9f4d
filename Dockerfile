# syntax=docker/dockerfile:1
#
# imgbuild in a container: patches images as an ordinary user, so it needs no --privileged,
# no /dev mount and no loop devices.
#
#   docker build -t imgbuild .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" imgbuild \
#       --board rpi4 --base base.img.xz --config imgbuild.toml --out dist/
#
# --user keeps the outputs owned by the caller; downloads are cached in /work/.cache
# (XDG_CACHE_HOME). Without --user the container runs as the unprivileged user `imgbuild`
# (uid 10001), which must be able to write to the mounted directory.

# --- build stage ------------------------------------------------------------------------------
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

# --- runtime stage ----------------------------------------------------------------------------
FROM debian:bookworm-slim

# Runtime libraries of the binary: libext2fs + libcom_err (e2fsprogs, dynamic); liblzma and zstd
# are linked statically. ca-certificates: HTTPS to AWS and to base-image downloads. e2fsprogs
# (e2fsck) and dosfstools (fsck.vfat) check the base's file systems before anything is written.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libext2fs2 libcom-err2 ca-certificates e2fsprogs dosfstools \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /work --shell /usr/sbin/nologin imgbuild

COPY --from=builder /out/imgbuild /usr/local/bin/imgbuild

ENV XDG_CACHE_HOME=/work/.cache
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["imgbuild"]
CMD ["--help"]
