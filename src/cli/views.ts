// The tables of `schedules`, `history`, `jobs` and `backups`, drawn from the API's
// answers, whichever client gave them (`status` has its own, in status.ts).
import { DateTime } from 'luxon';
import type { BackupsAnswer, HistoryAnswer, JobsAnswer, SchedulesAnswer } from './client.ts';
import { ago, humanBytes, humanDuration, renderTable } from './table.ts';

/** SPREAD: a spread schedule's offset for its target in the window ("+12m30s of 45m"). */
export function schedulesTable({ schedules }: SchedulesAnswer): string {
  return renderTable(
    ['ID', 'JOB', 'TARGET', 'CRON', 'ZONE', 'SPREAD', 'NEXT RUN (ZONE)', 'LAST', 'WHEN'],
    schedules.map((s) => [
      s.id,
      s.job,
      s.target,
      s.cron,
      s.tz,
      s.spread && `+${s.spread.offset} of ${s.spread.window}`,
      s.nextRun && DateTime.fromISO(s.nextRun, { setZone: true }).toFormat('yyyy-MM-dd HH:mm:ss ZZ'),
      s.lastRun?.outcome ?? 'never run',
      ago(s.lastRun?.finishedAt),
    ]),
  );
}

export function historyTable({ runs, timeZone: zone }: HistoryAnswer): string {
  return renderTable(
    [`STARTED (${zone})`, 'JOB', 'TARGET', 'TRIGGER', 'OUTCOME', 'DURATION', 'CODE', 'ERROR'],
    runs.map((r) => [
      DateTime.fromISO(r.started_at, { zone }).toFormat('yyyy-MM-dd HH:mm:ss'),
      r.job,
      r.target,
      r.trigger,
      r.outcome,
      r.finished_at ? humanDuration((Date.parse(r.finished_at) - Date.parse(r.started_at)) / 1000) : 'running',
      r.error_code,
      r.error,
    ]),
  );
}

export function jobsTable({ jobs }: JobsAnswer): string {
  return renderTable(
    ['JOB', 'WHAT IT DOES'],
    jobs.map((j) => [j.name, j.description]),
    200,
  );
}

/** One target's dumps and base backups, the recovery window and the last proofs. */
export function backupsTable(b: BackupsAnswer): string {
  const zone = b.timeZone;
  const at = (iso: string | null | undefined) =>
    iso ? DateTime.fromISO(iso, { zone }).toFormat('yyyy-MM-dd HH:mm:ss') : '-';
  const age = (s: number | null) => (s === null ? 'none' : `${humanDuration(s)} old`);
  const parts = [
    `Backups of target ${b.target} (engine ${b.engine}; times in ${zone})\n`,
    `newest verified dump: ${age(b.newestDumpAgeSeconds)}; newest base backup: ${age(b.newestBaseBackupAgeSeconds)}\n`,
  ];
  const where = (w: string[]) => w.join(' and ');
  parts.push(
    `\nDumps\n${
      b.dumps.length
        ? renderTable(
            [`FINISHED (${zone})`, 'FILE', 'FORMAT', 'SIZE', 'ROW COUNTS', 'RESTORE CHECK', 'WHERE'],
            b.dumps.map((d) => [
              at(d.finishedAt),
              d.file,
              d.format,
              humanBytes(d.bytes),
              d.rowCountsRecorded ? 'recorded' : 'no',
              d.restoreCheck ? `${d.restoreCheck.ok ? 'passed' : 'FAILED'} ${ago(d.restoreCheck.checkedAt)}` : 'never',
              where(d.where),
            ]),
            240,
          )
        : 'none\n'
    }`,
  );
  // One row per archived partition: what restore-partition takes (parent, partition, archive).
  const archived = b.partitionArchives.flatMap((a) =>
    a.partitions.map((p) => [a.parent, p.partition, String(p.rows), a.file, humanBytes(a.bytes), where(a.where)]),
  );
  parts.push(
    `\nPartition archives\n${
      archived.length
        ? renderTable(['PARENT', 'PARTITION', 'ROWS', 'ARCHIVE', 'SIZE', 'WHERE'], archived, 240)
        : 'none\n'
    }`,
  );
  const sets = b.pgbackrest
    ? b.pgbackrest.sets.map((s) => [
        at(s.stoppedAt),
        s.label,
        `pgBackRest ${s.type}`,
        humanBytes(s.bytes),
        b.pgbackrest!.location,
      ])
    : b.baseBackups.map((s) => [
        at(s.stoppedAt),
        s.label,
        `${s.format}, ${s.compression}`,
        humanBytes(s.bytes),
        where(s.where),
      ]);
  parts.push(
    `\nBase backups\n${
      sets.length ? renderTable([`STOPPED (${zone})`, 'LABEL', 'FORMAT', 'SIZE', 'WHERE'], sets, 240) : 'none\n'
    }`,
  );
  const w = b.recoveryWindow;
  parts.push(
    `\nRecovery window: ${
      w.earliest ? `${at(w.earliest)} to ${at(w.latest)} (${humanDuration(w.seconds)})` : 'none'
    }${w.brokenChains.length ? `; ${w.brokenChains.length} base backup(s) with a broken WAL chain` : ''}\n`,
  );
  const verdict = (r: BackupsAnswer['lastDrill']) => (r ? `${r.outcome} ${ago(r.finishedAt)}` : 'never');
  parts.push(`Last PITR drill: ${verdict(b.lastDrill)}; last restore check: ${verdict(b.lastRestoreCheck)}\n`);
  return parts.join('');
}
