# kube-proxy with only what its iptables mode runs: the iptables/ip6tables
# (nft backend) and conntrack programs of the node's Debian rootfs and the
# shared libraries they load.
ARG ROOTFS
FROM ${ROOTFS} AS tools
RUN set -eu; \
    mkdir -p /out; \
    progs="/usr/sbin/xtables-nft-multi /usr/sbin/conntrack"; \
    # The match/target extensions (statistic, comment, ...) are loaded at run time: their libraries too.
    exts="$(ls /usr/lib/x86_64-linux-gnu/xtables/*.so)"; \
    for f in $progs $exts $(ldd $progs $exts | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u); do \
      cp -L --parents "$f" /out/; \
    done; \
    cd /out/usr/sbin; \
    for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore \
             iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft ip6tables-nft-save ip6tables-nft-restore; do \
      ln -s xtables-nft-multi "$n"; \
    done; \
    mkdir -p /out/lib64 /out/etc /out/run /out/var/run /out/tmp; \
    chmod 1777 /out/tmp; \
    cp /etc/ethertypes /etc/protocols /etc/services /out/etc/ 2>/dev/null || true

FROM scratch
COPY --from=tools /out/ /
COPY kube-proxy /usr/local/bin/kube-proxy
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
