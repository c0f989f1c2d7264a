#!/usr/bin/env bash
# Build the CI box: a Debian 12 rootfs from debootstrap on a partitioned raw
# disk with the cloud kernel and GRUB, the agent's Debian dependencies baked in
# (guests have no mirror), a vagrant user with Vagrant's insecure key, then
# converted to qcow2 and packed as a libvirt box. Cached in $CACHE_DIR keyed by
# the recipe's hash; prints the box file's path. Facts: shared/VAGRANT.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

key=$(box_key)
box="$CACHE_DIR/debian12-ci-$key.box"
if [ -s "$box" ] && [ "${1:-}" != "--force" ]; then
  log "box cached: $box"
  echo "$box"
  exit 0
fi
mkdir -p "$CACHE_DIR/debs"
work=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
mnt="$work/mnt"
loop=""
cleanup() {
  set +e
  for m in dev/pts dev proc sys run; do mountpoint -q "$mnt/$m" && umount -l "$mnt/$m"; done
  mountpoint -q "$mnt" && umount "$mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT

pkgs=$(grep -hv '^\s*#' "$CI_DIR/box-packages.txt" "$REPO_DIR/scripts/apt-base.txt" | awk 'NF{print $1}' | sort -u | paste -sd,)
size_gb=8
raw="$work/disk.raw"
truncate -s "${size_gb}G" "$raw"
# One bootable MSDOS partition from 1 MiB (room for GRUB's core image).
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
loop=$(losetup -f --show -P "$raw")
# This kernel has no MSDOS partition parser: tell it where p1 is by hand.
[ -e "${loop}p1" ] || partx -a "$loop" 2>/dev/null || true
for _ in $(seq 20); do [ -e "${loop}p1" ] && break; sleep 0.2; done
mkfs.ext4 -q -L root "${loop}p1"
uuid=$(blkid -s UUID -o value "${loop}p1")
mkdir -p "$mnt"
mount "${loop}p1" "$mnt"

log "debootstrap bookworm ($(echo "$pkgs" | tr ',' ' ' | wc -w) extra packages)"
debootstrap --variant=minbase --include="$pkgs" --cache-dir="$CACHE_DIR/debs" \
  bookworm "$mnt" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

for m in dev dev/pts proc sys run; do mount --bind "/$m" "$mnt/$m"; done
in_root() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

cat >"$mnt/etc/fstab" <<FSTAB
UUID=$uuid / ext4 errors=remount-ro 0 1
FSTAB
echo debian12 >"$mnt/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debian12\n' >"$mnt/etc/hosts"
# No mirror, no DNS from inside: empty resolv.conf, apt pointed nowhere useful.
: >"$mnt/etc/resolv.conf"
: >"$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id"

# First NIC: DHCP from libvirt's isolated management network, but never a
# default route or DNS from it (guests must not reach anything off this host).
# net.ifnames=0 keeps it eth0; Vagrant writes 50-vagrant-ethN.network for the
# private networks, which sort first and so win.
mkdir -p "$mnt/etc/systemd/network"
cat >"$mnt/etc/systemd/network/99-mgmt-dhcp.network" <<'NET'
[Match]
Name=eth0

[Network]
DHCP=ipv4
IPv6AcceptRA=no
LinkLocalAddressing=no

[DHCPv4]
UseRoutes=false
UseGateway=false
UseDNS=false
UseNTP=false
UseDomains=false
NET
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# Boot must not wait for every link (the private NICs are configured later).
mkdir -p "$mnt/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20\n' \
  >"$mnt/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"

# Nothing that tries the network or churns the disk on its own.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
  e2scrub_reap.service systemd-timesyncd.service; do
  ln -sf /dev/null "$mnt/etc/systemd/system/$unit"
done
printf 'APT::Periodic::Enable "0";\n' >"$mnt/etc/apt/apt.conf.d/10periodic-off"

# SSH: host keys are made at first boot (each VM its own), no DNS lookups.
# Only an ed25519 key: RSA key generation takes ~15 s under emulation.
rm -f "$mnt"/etc/ssh/ssh_host_*
cat >"$mnt/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=ssh.service
UNIT
in_root systemctl enable ssh-hostkeys.service ssh.service >/dev/null 2>&1
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\nGSSAPIAuthentication no\n' \
  >"$mnt/etc/ssh/sshd_config.d/10-box.conf"

# The vagrant user: Vagrant's insecure key (replaced at first `vagrant up`),
# passwordless sudo.
pub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub | head -n1)
in_root useradd -m -s /bin/bash -U vagrant
install -d -m 700 -o 1000 -g 1000 "$mnt/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$pub" "$mnt/home/vagrant/.ssh/authorized_keys"
printf 'vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n' >"$mnt/etc/sudoers.d/vagrant"
chmod 440 "$mnt/etc/sudoers.d/vagrant"
mkdir -p "$mnt/vagrant"

# GRUB on the disk, serial console, no menu delay, eth0 naming.
cat >"$mnt/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0 biosdevname=0"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
in_root grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 || { cat "$work/grub.log" >&2; exit 1; }
in_root grub-mkconfig -o /boot/grub/grub.cfg >>"$work/grub.log" 2>&1 || { cat "$work/grub.log" >&2; exit 1; }
# grub-mkconfig names the loop device as root=: boot by filesystem UUID instead.
sed -i -E "s#root=/dev/loop[0-9]+p1#root=UUID=$uuid#g" "$mnt/boot/grub/grub.cfg"
if ! grep -qE "^\s*linux\s+/boot/vmlinuz-.* root=UUID=$uuid" "$mnt/boot/grub/grub.cfg"; then
  cat "$work/grub.log" >&2
  log "grub.cfg has no kernel entry booting root=UUID=$uuid"
  exit 1
fi
in_root apt-get clean
rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/tmp/*

sync -f "$mnt"
for m in dev/pts dev proc sys run; do umount "$mnt/$m"; done
umount "$mnt"
losetup -d "$loop"
loop=""

log "qcow2 + box"
qemu-img convert -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$size_gb" >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'VF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
  end
end
VF
# Plain tar (Vagrant accepts tar, tar.gz or zip): gzip would cost more time than it saves here.
tar -C "$work" -cf "$work/out.box" metadata.json Vagrantfile box.img
rm -f "$CACHE_DIR"/debian12-ci-*.box
mv "$work/out.box" "$box"
log "box built: $box ($(du -h "$box" | cut -f1))"
echo "$box"
