# Shared names and helpers for serfnode's container images. Sourced by
# scripts/build-images (and by anything else that needs the image names, e.g.
# a demo or the container tests): `. scripts/lib-images.sh`. Defines only
# variables and functions; runs nothing.

# The images scripts/build-images produces. The base is a local debootstrap
# of Debian bookworm (no registry needed); the others are built on it.
SERFNODE_BASE_IMAGE=${SERFNODE_BASE_IMAGE:-serfnode-base:bookworm}
SERFNODE_IMAGE=${SERFNODE_IMAGE:-serfnode:dev}
SERFNODE_TEST_DEBIAN_IMAGE=${SERFNODE_TEST_DEBIAN_IMAGE:-serfnode-test-debian:dev}
SERFNODE_TEST_BUSYBOX_IMAGE=${SERFNODE_TEST_BUSYBOX_IMAGE:-serfnode-test-busybox:dev}

# The static binary (relative to the repository root): the same file runs in
# the parent image and, shared through the parent's volume, in any child.
SERFNODE_MUSL_TARGET=x86_64-unknown-linux-musl
SERFNODE_MUSL_BIN=target/$SERFNODE_MUSL_TARGET/release/serfnode

# image_exists IMAGE: true when the local Docker has IMAGE.
image_exists() {
  docker image inspect "$1" >/dev/null 2>&1
}

# image_id IMAGE: the local image id of IMAGE, or nothing.
image_id() {
  docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
}

# drop_replaced_image OLD_ID: after a tag moved to a new build, removes the
# image it pointed to before if nothing names it any more (only that one
# image: never a broad prune of other people's dangling images).
drop_replaced_image() {
  local old=$1
  [ -n "$old" ] || return 0
  local tags
  tags=$(docker image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null) || return 0
  if [ "$tags" = 0 ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
}

# host_debian_mirror: the Debian archive the host's apt uses for the main
# suite (not -security, not third-party repositories), from one-line
# sources.list files and deb822 .sources files; http://deb.debian.org/debian
# when none is found. SERFNODE_MIRROR overrides.
host_debian_mirror() {
  if [ -n "${SERFNODE_MIRROR:-}" ]; then
    echo "$SERFNODE_MIRROR"
    return
  fi
  local found=""
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    found=$(awk '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i+1) == "bookworm" && $(i) ~ /\/debian\/?$/) { print $(i); exit }
      }' "$f")
    [ -z "$found" ] || break
  done
  if [ -z "$found" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      # deb822 stanzas separated by blank lines; take the URI of a stanza
      # whose Suites name bookworm itself.
      found=$(awk 'BEGIN { RS = ""; FS = "\n" }
        {
          uris = ""; suites = ""
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
            if ($i ~ /^Suites:/) { suites = " " $i " "; sub(/^ Suites:/, " ", suites) }
          }
          if (suites ~ /[ \t]bookworm[ \t]/ && uris ~ /\/debian\/?( |$)/) {
            split(uris, u, /[ \t]+/); print u[1]; exit
          }
        }' "$f")
      [ -z "$found" ] || break
    done
  fi
  echo "${found:-http://deb.debian.org/debian}"
}
