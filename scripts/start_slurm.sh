#!/usr/bin/env bash
# A single-node SLURM on this machine, for the cluster path's test (tests/test_slurm.py): munged, slurmctld and slurmd
# as root, no cgroups (processes tracked through /proc), accounting off, one partition "debug" holding this node.
# Needs root and Debian's packages: apt-get install -y slurm-wlm munge  (22.05 on bookworm).
# Idempotent: a second call leaves running daemons alone. Stop with: scripts/start_slurm.sh stop
set -euo pipefail

CONF_DIR=/etc/slurm
NODE=$(hostname -s)

if [[ "${1:-}" == "stop" ]]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "start_slurm.sh: run as root (slurmctld, slurmd and munged are started here)" >&2
    exit 2
fi
for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "start_slurm.sh: $tool not found: apt-get install -y slurm-wlm munge" >&2; exit 2; }
done

# munge: the key every SLURM daemon and client authenticates with
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged

# slurm.conf: this node's CPUs and memory as the OS reports them (slurmd refuses a node configured above them)
CPUS=$(nproc)
MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=cvpdl
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

# ready when the node is idle (or already running jobs)
for _ in $(seq 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "idle|mixed|allocated"; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "start_slurm.sh: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
