# kind's node base image (kind's images/base), rebuilt offline: the same files
# and the same systemd clean-up on a debootstrapped Debian rootfs with Debian's
# containerd, runc and CNI plugins instead of kind's own builds of them.
# Built by e2e/kind/node-image.sh with the legacy builder (files carry their
# modes from the context, so no COPY --chmod).
ARG ROOTFS
FROM ${ROOTFS}
COPY root/ /
RUN set -eux; \
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete; \
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
    echo "ReadKMsg=no" >> /etc/systemd/journald.conf; \
    ln -sf /usr/lib/systemd/systemd /sbin/init; \
    ln -sf /usr/bin/containerd /usr/local/bin/containerd; \
    mkdir -p /opt/cni/bin /etc/kubernetes/manifests; \
    cp -a /usr/lib/cni/* /opt/cni/bin/; \
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service trellis-no-leak.service; \
    systemctl mask systemd-binfmt.service; \
    ctr oci spec \
      | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
