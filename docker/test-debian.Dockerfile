# Child image for the container tests: plain Debian (the local minbase
# bookworm: bash, coreutils, getent), nothing of serfnode's in it; the
# parent supplies the binary through its volume. Built by
# scripts/build-images with an empty context.
ARG BASE=serfnode-base:bookworm
FROM ${BASE}
CMD ["sleep", "infinity"]
