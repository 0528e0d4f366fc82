#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm + munge, run as root, no systemd), for the
# SLURM tests and for trying launch.py -p locally.  Usage: scripts/slurm_dev_cluster.sh start|stop|status
# State lives in $EGOLAB_SLURM_BASE (default /tmp/egolab-slurm). Idempotent: start on a running cluster
# only checks it; stop cancels jobs first (a job step outlives slurmd), then stops the daemons.
set -euo pipefail
BASE=${EGOLAB_SLURM_BASE:-/tmp/egolab-slurm}
# Accounting (slurmdbd + MariaDB) gives sacct, which submitit reads job states from.
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

running() {  # running PIDFILE NAME: the process in PIDFILE exists, is NAME, and is not a zombie
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.Z' "/proc/$pid/status"
}

retry() {  # retry CMD...: up to 30 s
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

write_config() {
  local hw mem cpus
  hw=$(slurmd -C | head -1)
  mem=$(( $(grep -oP 'RealMemory=\K[0-9]+' <<<"$hw") * 9 / 10 ))
  cpus=$(grep -oP 'CPUs=.*ThreadsPerCore=[0-9]+' <<<"$hw")
  mkdir -p /etc/slurm
  cat > /etc/slurm/slurm.conf.egolab <<CONF
ClusterName=egolab
SlurmctldHost=localhost
SlurmUser=root
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
TaskPlugin=task/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
ReturnToService=2
KillWait=5
NodeName=localhost $cpus RealMemory=$mem
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  if cmp -s /etc/slurm/slurm.conf.egolab /etc/slurm/slurm.conf; then
    rm /etc/slurm/slurm.conf.egolab
  else
    mv /etc/slurm/slurm.conf.egolab /etc/slurm/slurm.conf
    if running "$BASE/run/slurmctld.pid" slurmctld; then scontrol reconfigure; fi
  fi
}

start_accounting() {
  install -d -o mysql -g mysql "$BASE/mysql" "$BASE/mysqlrun" /run/mysqld
  if [ ! -d "$BASE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$BASE/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1
  fi
  if ! running "$BASE/mysqlrun/mysqld.pid" mariadbd; then
    setsid mariadbd --no-defaults --user=mysql --datadir="$BASE/mysql" --skip-networking \
      --socket=/run/mysqld/mysqld.sock --pid-file="$BASE/mysqlrun/mysqld.pid" \
      --log-error="$BASE/mysqlrun/mysqld.log" </dev/null &>/dev/null &
  fi
  retry mariadb-admin ping
  cat > /etc/slurm/slurmdbd.conf <<CONF
SlurmUser=root
DbdHost=localhost
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  running "$BASE/run/slurmdbd.pid" slurmdbd || slurmdbd
  retry sacctmgr -n list cluster
}

start() {
  if ! dpkg -s $PACKAGES >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
  fi
  mkdir -p "$BASE"/{state,spool,log,run}
  install -d -o munge -g munge "$BASE/munge" /run/munge
  write_config
  running "$BASE/munge/munged.pid" munged || runuser -u munge -- munged --pid-file="$BASE/munge/munged.pid" \
    --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"
  retry munge -n
  start_accounting
  local fresh=0
  # slurmctld without -c keeps its state, so job ids keep growing and submitit never meets a stale folder
  running "$BASE/run/slurmctld.pid" slurmctld || { slurmctld -i; fresh=1; }
  running "$BASE/run/slurmd.pid" slurmd || slurmd -N localhost
  for _ in $(seq 120); do
    case $(sinfo -h -o %T 2>/dev/null || true) in
      idle|mixed|allocated)
        if [ $fresh = 1 ]; then squeue -h -o %A | xargs -r scancel || true; fi
        echo "slurm up (state in $BASE)"
        return 0;;
      drain*|down*) scontrol update nodename=localhost state=resume || true;;
    esac
    sleep 0.5
  done
  echo "slurm did not start; logs in $BASE/log" >&2
  return 1
}

stop() {
  if running "$BASE/run/slurmctld.pid" slurmctld && [ -n "$(squeue -h -o %A)" ]; then
    squeue -h -o %A | xargs -r scancel
    for _ in $(seq 150); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.1; done
  fi
  local pids="" pidfile name pid
  for pidfile_name in run/slurmd.pid:slurmd run/slurmctld.pid:slurmctld run/slurmdbd.pid:slurmdbd \
    mysqlrun/mysqld.pid:mariadbd munge/munged.pid:munged; do
    pidfile=$BASE/${pidfile_name%%:*}
    name=${pidfile_name##*:}
    if running "$pidfile" "$name"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      pids="$pids $pid"
    fi
  done
  for pid in $pids; do
    for _ in $(seq 150); do grep -qs '^State:.[^Z]' "/proc/$pid/status" || break; sleep 0.1; done
    if grep -qs '^State:.[^Z]' "/proc/$pid/status"; then kill -9 "$pid"; fi
  done
  echo "slurm stopped"
}

case ${1:-} in
  start) start;;
  stop) stop;;
  status) sinfo && squeue;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2;;
esac
