#!/bin/sh
# k3s-agentd purge-managed: remove what k3s-agentd wrote OUTSIDE its own
# package files, and nothing else:
#   /etc/sysctl.d/90-k3s-agentd.conf        (runtime values stay until reboot)
#   /etc/ssh/sshd_config.d/01-k3s-agentd.conf  (sshd reloaded if its config is valid)
#   nft table inet k3s_agentd, iptables/ip6tables chains K3S-AGENTD-*
# K3s's own files (/var/lib/rancher, /etc/rancher) are never touched; the
# opt-in drop-in /etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml is left in
# place (removing it would change K3s's flags at its next restart) and named.
#
# Run it by hand after stopping the daemon (it would heal everything back):
#   systemctl stop k3s-agentd && /usr/libexec/k3s-agentd/purge-managed
# or ask the package removal to run it:
#   K3S_AGENTD_PURGE_MANAGED=yes apt-get purge k3s-hardening-agent
#   K3S_AGENTD_PURGE_MANAGED=yes dnf remove k3s-hardening-agent
set -u
ROOT=${K3S_AGENTD_ROOT:-}
say() { echo "k3s-agentd purge-managed: $*"; }

remove_file() {
    if [ -e "$ROOT$1" ] || [ -L "$ROOT$1" ]; then
        rm -f -- "$ROOT$1" && say "removed $1"
    fi
}

remove_file /etc/sysctl.d/90-k3s-agentd.conf

if [ -e "$ROOT/etc/ssh/sshd_config.d/01-k3s-agentd.conf" ]; then
    remove_file /etc/ssh/sshd_config.d/01-k3s-agentd.conf
    # Reload sshd only when the remaining config is valid (sshd -t) and we
    # are on the real root; a failed reload must never leave sshd down.
    if [ -z "$ROOT" ] && command -v sshd >/dev/null 2>&1 && sshd -t 2>/dev/null; then
        for unit in ssh.service sshd.service; do
            if systemctl is-active --quiet "$unit" 2>/dev/null; then
                systemctl reload "$unit" && say "reloaded $unit"
            fi
        done
    fi
fi

if [ -z "$ROOT" ]; then
    if command -v nft >/dev/null 2>&1 && nft list table inet k3s_agentd >/dev/null 2>&1; then
        nft delete table inet k3s_agentd && say "deleted nft table inet k3s_agentd"
    fi
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null 2>&1 || continue
        for table in filter nat mangle raw; do
            rules=$("$tool-save" -t "$table" 2>/dev/null) || continue
            # First the jumps into our chains (from any chain), then our chains.
            printf '%s\n' "$rules" | grep -E '^-A [^ ]+ .*-j K3S-AGENTD-' | sed 's/^-A /-D /' |
                while read -r line; do
                    # shellcheck disable=SC2086 # a saved rule is a word list
                    "$tool" -w -t "$table" $line 2>/dev/null
                done
            for chain in $(printf '%s\n' "$rules" | sed -n 's/^:\(K3S-AGENTD-[^ ]*\) .*/\1/p'); do
                "$tool" -w -t "$table" -F "$chain" 2>/dev/null
                "$tool" -w -t "$table" -X "$chain" 2>/dev/null && say "deleted $tool $table chain $chain"
            done
        done
    done
fi

if [ -e "$ROOT/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml" ]; then
    say "left /etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml (K3s flags); remove it yourself and restart K3s if you mean to"
fi
exit 0
