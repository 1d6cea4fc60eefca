#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started, by pid, and forget the cluster's state (job ids,
# queue), so the next start is fresh.
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
sleep 0.5
rm -rf /var/spool/slurmd/* /var/spool/slurmctld/* 2>/dev/null || true
echo "slurm: stopped"
