# Child image for the container tests: FROM scratch with nothing but Debian's
# static busybox (package busybox-static) and its applet links: no libc, no
# shell of its own, no fusermount. Proves the static serfnode binary runs in
# any image. scripts/build-images extracts busybox into the build context.
FROM scratch
COPY busybox /bin/busybox
COPY passwd group /etc/
RUN ["/bin/busybox", "sh", "-c", "set -e; /bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /root /tmp; /bin/busybox chmod 1777 /tmp; /bin/busybox --install -s"]
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sleep", "2147483647"]
