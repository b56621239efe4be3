# serfnode parent image: the static serfnode binary, Debian's serf, and the
# FUSE tools. Built by scripts/build-images, which stages the binary at
# target/images/serfnode (static musl build, debug info stripped) and builds
# with --build-arg BASE=serfnode-base:bookworm, a local debootstrap, because no
# registry may be reachable. With a registry, the default base works as is:
#   docker build -t serfnode:dev .        (after scripts/build-images --only-binary)
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# serf and fusermount3 come preinstalled in serfnode-base; install them only
# when the base lacks them. (As root, serfnode mounts with mount(2) itself;
# fusermount3 is the fallback path for a non-root mount.) The original's
# files at the root of the parent are links into the default mount.
RUN set -eu; \
    need=""; \
    command -v serf >/dev/null 2>&1 || need="$need serf"; \
    command -v fusermount3 >/dev/null 2>&1 || need="$need fuse3"; \
    if [ -n "$need" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    serf version; \
    mkdir -p /serfnode /serfnode-share; \
    for f in me.json serfnodes_by_id.json serfnodes_by_role.json children_by_name.json; do \
      ln -s "/serfnode/$f" "/$f"; \
    done

COPY target/images/serfnode /usr/local/bin/serfnode

# The parent's own anonymous volume, shared with its children: the static
# binary they run and the unix socket that feeds their mounts. Never the
# Docker socket.
VOLUME /serfnode-share

ENTRYPOINT ["/usr/local/bin/serfnode"]
# The parent supervises the daemon (agent --docker) and launches the children.
CMD ["parent"]
