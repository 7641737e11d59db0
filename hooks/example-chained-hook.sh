#!/bin/sh
# An example of a hookscript that pct-passthrough chains. Proxmox runs one
# hookscript per container; install.sh records the one a container had as
#   chain = "local:snippets/example-chained-hook.sh"
# in /etc/pve/pct-passthrough/<vmid>.toml, and pct-passthrough runs it with
# the same arguments: before its own work in pre-start (a non-zero exit
# aborts the start, with this script's message in the task log), after it in
# post-start, pre-stop and post-stop (a non-zero exit only warns).
#
# Install: cp example-chained-hook.sh /var/lib/vz/snippets/ && chmod 755 it.
set -eu
vmid=$1
phase=$2
case $phase in
pre-start)
    # Example: refuse to start when a backup mount is missing.
    # mountpoint -q /mnt/backup || { echo "backup mount missing" >&2; exit 1; }
    echo "example hook: $vmid is starting"
    ;;
post-start) echo "example hook: $vmid started" ;;
pre-stop) echo "example hook: $vmid is stopping" ;;
post-stop) echo "example hook: $vmid stopped" ;;
*) ;; # phases added by later Proxmox versions
esac
exit 0
