#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm and munge, no systemd), for the Slurm tests
# and for trying the dispatcher route before a real cluster:
#
#   scripts/slurm-local.sh start    install if missing, start munged, slurmctld and slurmd; wait for an idle node
#   scripts/slurm-local.sh status   "up" (exit 0) or "down" (exit 1)
#   scripts/slurm-local.sh stop     stop the daemons this script started (by their PID files)
#   scripts/slurm-local.sh ssh      also an sshd on 127.0.0.1:$SLURM_LOCAL_SSH_PORT (default 2222) that lets
#                                   root in with a key made for it, $STATE/ssh/id_ed25519 (for SSHContext)
#
# Root only (it writes /etc/slurm/slurm.conf, unless one not written by this script is there: then it stops).
# State, logs and PID files under $SLURM_LOCAL_STATE (default /tmp/slurm-local). No accounting (sacct
# needs slurmdbd and a database): squeue and scontrol show job are what works.
set -euo pipefail
STATE=${SLURM_LOCAL_STATE:-/tmp/slurm-local}
CONF=/etc/slurm/slurm.conf
MARK="# written by dflow-simplify scripts/slurm-local.sh"

die() { echo "slurm-local: $*" >&2; exit 1; }

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's configuration"
    fi
    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -1)  # NodeName=<host> CPUs=... RealMemory=...
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SchedulerType=sched/backfill
MinJobAge=3600
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

is_up() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

start() {
    [ "$(id -u)" = 0 ] || die "needs root (it starts munged and the Slurm daemons)"
    install
    if is_up; then echo "slurm-local: already up"; return; fi
    write_conf
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -f /etc/munge/munge.key ] || { runuser -u munge -- mungekey --create 2>/dev/null || /usr/sbin/create-munge-key; }
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
    fi
    slurmctld
    slurmd
    for _ in $(seq 1 100); do
        if is_up; then echo "slurm-local: up ($(sinfo -h -o '%P %D node(s) %c cpus' | head -1))"; return; fi
        sleep 0.2
    done
    die "the node did not come up in 20 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
}

ssh_start() {
    [ "$(id -u)" = 0 ] || die "needs root"
    command -v sshd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null
    local dir="$STATE/ssh" port=${SLURM_LOCAL_SSH_PORT:-2222}
    mkdir -p "$dir" /run/sshd && chmod 700 "$dir"
    [ -f "$dir/host_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$dir/host_key"
    [ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$dir/id_ed25519"
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    if ! { [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }; then
        /usr/sbin/sshd -f /dev/null -h "$dir/host_key" -o ListenAddress=127.0.0.1 -o Port="$port" \
            -o PidFile="$dir/sshd.pid" -o AuthorizedKeysFile="$dir/authorized_keys" -o PermitRootLogin=prohibit-password \
            -o PasswordAuthentication=no -o StrictModes=no -o "Subsystem=sftp internal-sftp"
    fi
    for _ in $(seq 1 50); do
        if ssh -q -i "$dir/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            root@127.0.0.1 true 2>/dev/null; then
            echo "slurm-local: sshd on 127.0.0.1:$port, key $dir/id_ed25519"; return
        fi
        sleep 0.2
    done
    die "sshd did not let root in with $dir/id_ed25519"
}

stop() {
    local f
    for f in "$STATE/ssh/sshd.pid" "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    echo "slurm-local: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    ssh) ssh_start ;;
    status) if is_up; then echo up; else echo down; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status|ssh" >&2; exit 2 ;;
esac
