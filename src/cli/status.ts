// `pgmaint status` as text: the report of GET /api/status (local or remote), on one screen.
import { DateTime } from 'luxon';
import type { StatusReport } from '../monitoring/status.ts';
import { ago, humanDuration, renderTable } from './table.ts';

export function statusTable(r: StatusReport, zone: string): string {
  const at = DateTime.fromISO(r.at, { zone }).toFormat('yyyy-MM-dd HH:mm:ss ZZ');
  const sampled = DateTime.fromISO(r.sampledAt, { zone }).toFormat('HH:mm:ss');
  const parts = [
    `pgmaint status at ${at} (${zone})\n` +
      `Health snapshot: taken at ${sampled}, ${humanDuration(r.ageSeconds)} old ` +
      `(${r.source === 'snapshot' ? "the server's sampler, every 30s" : 'read for this report'})\n`,
  ];
  parts.push(
    `\nQueues\n${renderTable(
      ['QUEUE', 'WORKERS', 'WAITING', 'ACTIVE', 'DELAYED', 'FAILED', ''],
      r.queues.map((q) => [
        q.queue,
        q.workers,
        q.waiting,
        q.active,
        q.delayed,
        q.failed,
        q.unserved ? 'NO WORKER' : '',
      ]),
    )}`,
  );
  parts.push(
    r.alerts.length
      ? `\nOpen alerts\n${renderTable(
          ['SEVERITY', 'RULE', 'SINCE', 'SUMMARY'],
          r.alerts.map((a) => [a.severity, a.rule, ago(a.since), a.summary]),
          120,
        )}`
      : '\nOpen alerts: none\n',
  );
  parts.push(
    `\nBackups (ages)\n${renderTable(
      ['TARGET', 'DUMP', 'BASE BACKUP', 'PITR DRILL', 'ARCHIVE LAG', 'RECOVERY WINDOW'],
      r.targets.map((t) => [
        t.target,
        t.dumpAgeSeconds === null ? 'none' : humanDuration(t.dumpAgeSeconds),
        t.baseBackupAgeSeconds === null ? 'none' : humanDuration(t.baseBackupAgeSeconds),
        t.drill
          ? `${t.drill.ok ? 'passed' : 'FAILED'} ${humanDuration(t.drill.ageSeconds)} ago` +
            (t.drill.rtoSeconds !== null ? `, RTO ${humanDuration(t.drill.rtoSeconds)}` : '')
          : 'never',
        humanDuration(t.archiveLagSeconds),
        humanDuration(t.recoveryWindowSeconds),
      ]),
    )}`,
  );
  const unreachable = r.targets.filter((t) => !t.reachable);
  if (unreachable.length)
    parts.push(
      `\nUnreachable targets\n${renderTable(
        ['TARGET', 'ERROR'],
        unreachable.map((t) => [t.target, t.error]),
        120,
      )}`,
    );
  if (r.partitions.length)
    parts.push(
      `\nPartition runway\n${renderTable(
        ['TARGET', 'TABLE', 'RUNWAY', 'DEFAULT ROWS', 'STRANDED', 'ERROR'],
        r.partitions.map((p) => [
          p.target,
          p.table,
          p.policy ? humanDuration(p.runwaySeconds) : 'no policy',
          p.defaultRows,
          p.strandedPartitions.join(', ') || null,
          p.error,
        ]),
        120,
      )}`,
    );
  const g = r.governor;
  const inTime = (iso: string) => `in ${humanDuration((Date.parse(iso) - Date.parse(r.at)) / 1000)}`;
  if (g.holds.length)
    parts.push(
      `\nHeld by hand (pgmaint resume ends a hold)\n${renderTable(
        ['WHAT', 'SINCE', 'ENDS', 'REASON'],
        g.holds.map((h) => [h.what, ago(h.since), inTime(h.until), h.reason]),
        120,
      )}`,
    );
  if (g.held.length)
    parts.push(
      `\nRuns held by the governor\n${renderTable(
        ['JOB', 'TARGET', 'STATE', 'FOR', 'BEFORE', 'REASON'],
        g.held.map((h) => [
          `${h.job}/${h.jobId}`,
          h.target,
          h.state,
          humanDuration(h.heldSeconds),
          h.started ? h.unit : 'its start',
          h.reason,
        ]),
        120,
      )}`,
    );
  if (g.deferred.length)
    parts.push(
      `\nDeferred by load (the next run goes on)\n${renderTable(
        ['JOB', 'TARGET', 'WHEN', 'BEFORE', 'REASON'],
        g.deferred.map((d) => [d.job, d.target, ago(d.at), d.unit, d.reason]),
        120,
      )}`,
    );
  const errors = Object.entries(r.errors);
  if (errors.length) parts.push(`\nNot read: ${errors.map(([k, v]) => `${k}: ${v}`).join('; ')}\n`);
  return parts.join('');
}
