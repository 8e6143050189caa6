#!/usr/bin/env bash
# A real single-host Slurm for tests: Debian's packages, one node with this machine's CPUs and memory.
#   slurm_local.sh install   apt-get install slurm-wlm (as root; a no-op when the daemons are installed)
#   slurm_local.sh start     write slurm.conf under $SLURM_LOCAL_DIR, start slurmctld and slurmd, wait for the node
#   slurm_local.sh stop      cancel this cluster's jobs, stop both daemons
#   slurm_local.sh env       print the SLURM_CONF=... line clients need
# Authentication is auth/none (with cred/none): the packaged Slurm 22.05 supports it without munged.
# Only this private cluster is touched: its own config (clients find it through SLURM_CONF), state
# directories, ports and pid files; a system Slurm configured in /etc/slurm is left alone.
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-/tmp/slurm-local}"
ctld_port="${SLURM_LOCAL_CTLD_PORT:-16817}"
slurmd_port="${SLURM_LOCAL_SLURMD_PORT:-16818}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "slurm_local.sh install: needs root to apt-get install slurm-wlm" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurm-wlm >"$dir.apt.log" 2>&1 \
        || { apt-get update >>"$dir.apt.log" 2>&1 \
             && apt-get install -y --no-install-recommends slurm-wlm >>"$dir.apt.log" 2>&1; } \
        || { echo "apt-get install slurm-wlm failed:" >&2; tail -n 20 "$dir.apt.log" >&2; exit 1; }
}

write_config() {
    local host node_line
    host="$(hostname -s)"
    # `slurmd -C` prints this machine's node line: CPUs, sockets, cores, threads, RealMemory.
    node_line="$(slurmd -C | head -n 1)"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$conf" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=15
MinJobAge=600
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

running() {  # running PIDFILE: the daemon recorded there is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    mkdir -p "$dir"
    install_packages
    if running "$dir/slurmctld.pid" || running "$dir/slurmd.pid"; then
        echo "slurm_local.sh start: already running in $dir (stop it first)" >&2
        exit 1
    fi
    write_config
    slurmctld -c -f "$conf"   # -c: no state from an earlier run; daemonizes and writes its pid file
    slurmd -c -f "$conf"
    local deadline=$((SECONDS + 60)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state="$(sinfo -h -N -o %T 2>/dev/null | head -n 1)"
        [ "$state" = idle ] && { echo "SLURM_CONF=$conf"; return; }
        sleep 1
    done
    echo "slurm_local.sh start: node not idle after 60 s (state '$state'); logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    stop
    exit 1
}

stop() {
    local name pid
    if running "$dir/slurmctld.pid"; then
        # Jobs first: their processes (slurmstepd and below) would outlive slurmd.
        scancel --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 60); do
            [ -z "$(squeue -h -u "$(id -un)" -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    for name in slurmd slurmctld; do
        running "$dir/$name.pid" || continue
        pid="$(cat "$dir/$name.pid")"
        kill "$pid"
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$dir/$name.pid"
    done
}

case "${1:-}" in
    install) mkdir -p "$(dirname "$dir")"; install_packages ;;
    start) start ;;
    stop) stop ;;
    env) echo "SLURM_CONF=$conf" ;;
    *) echo "usage: $0 {install|start|stop|env}" >&2; exit 2 ;;
esac
