// Concurrency across the deployment, and heavy jobs limited per cluster, with real
// worker processes: a job kind's global limit holds across three workers; two heavy jobs
// on two databases of one cluster never overlap while another cluster's may; a worker
// SIGKILLed while it holds a cluster's permit blocks that cluster only until its lease ends.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { clusterOf } from '../../src/core/config.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
/** The test database under another spelling of its host: another cluster, as pgmaint counts them. */
let otherSpelling: string;

beforeAll(async () => {
  h = await createHarness('clusters');
  const u = new URL(h.dbUrl);
  u.hostname = u.hostname === 'localhost' ? '127.0.0.1' : 'localhost';
  otherSpelling = u.toString();
  configure({});
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
});
afterAll(() => h.close());

/** The file the worker processes start with; `noop` stands in for a heavy job (it never connects to its target). */
function configure(noop: object) {
  h.configFile({
    targets: {
      main: { schedules: 'none' },
      // A second database of main's cluster, and "another" cluster.
      sibling: { url: h.dbUrl, schedules: 'none' },
      elsewhere: { url: otherSpelling, schedules: 'none' },
    },
    worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, heavyWaitMs: 200 },
    jobs: { noop },
  });
}
afterEach(() => h.killChildren());

interface Run {
  job_id: string;
  target: string;
  worker: string;
  outcome: string;
  started: number;
  finished: number;
}

async function runs(jobIds: string[]): Promise<Run[]> {
  const { rows } = await h.admin.query(
    `select job_id, target, worker, outcome, extract(epoch from started_at) * 1000 as started,
            extract(epoch from finished_at) * 1000 as finished
       from pgmaint.run_history where queue = 'noop' and job_id = any($1) order by started_at`,
    [jobIds],
  );
  return rows.map((r) => ({ ...r, started: Number(r.started), finished: Number(r.finished) }));
}

const overlap = (a: Run, b: Run) => a.started < b.finished && b.started < a.finished;

/** The most runs that were running at one moment. */
function mostAtOnce(rs: Run[]): number {
  const edges = rs.flatMap((r) => [
    [r.started, 1],
    [r.finished, -1],
  ]);
  // An end and a start at the same millisecond do not overlap: ends first.
  edges.sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let [now, most] = [0, 0];
  for (const [, d] of edges) {
    now += d!;
    most = Math.max(most, now);
  }
  return most;
}

async function workers(n: number) {
  const procs = Array.from({ length: n }, () => h.spawnPgmaint(['worker', '--queues', 'noop']));
  await Promise.all(procs.map((p) => p.waitFor(/worker started/)));
  return procs;
}

describe('limits across the deployment', () => {
  it("the cluster is a target's `cluster`, or the host and port as written: one host, two spellings", () => {
    expect(clusterOf({ url: 'postgres://u:p@DB1.example.com/x' })).toBe('db1.example.com:5432');
    expect(clusterOf({ url: 'postgres://u@db1.example.com:5433/y?sslmode=require' })).toBe('db1.example.com:5433');
    expect(clusterOf({ url: 'postgres://u@[::1]:6432/z' })).toBe('[::1]:6432');
    expect(clusterOf({ url: 'postgresql:///dairy?host=/run/postgresql&port=5433' })).toBe('/run/postgresql:5433');
    expect(clusterOf({ url: h.dbUrl })).not.toBe(clusterOf({ url: otherSpelling }));
    expect(clusterOf({ url: h.dbUrl })).toBe(clusterOf({ url: h.dbUrl.replace(/\/[^/?]+(\?|$)/, '/otherdb$1') }));
    // A target's `cluster` names it whatever its URL says; the permits follow the targets' clusters.
    expect(clusterOf({ url: h.dbUrl, cluster: 'db-a' })).toBe('db-a');
    expect(rt.config.targets.get('sibling')!.cluster).toBe(rt.config.targets.get('main')!.cluster);
  });

  it('globalConcurrency 2: never more than two runs of the kind at once across three worker processes', async () => {
    // Not heavy here: the global limit alone. Three workers that each run one at a time would run three at
    // once without it; sampled while ten runs drain, and read back from the run history.
    configure({ concurrency: 1, globalConcurrency: 2 });
    const procs = await workers(3);
    const queue = rt.queues.get('noop');
    const jobs = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        rt.queues.enqueue('noop', { target: ['main', 'sibling', 'elsewhere'][i % 3], sleepMs: 400 }),
      ),
    );
    let maxActive = 0;
    let done = false;
    const sampling = (async () => {
      while (!done) {
        maxActive = Math.max(maxActive, await queue.getActiveCount());
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    for (const { job } of jobs) expect((await waitForFinished(queue, job.id!, 60_000)).state).toBe('completed');
    done = true;
    await sampling;
    expect(maxActive).toBeLessThanOrEqual(2);
    const ran = await waitUntil(async () => {
      const r = await runs(jobs.map((j) => j.job.id!));
      return r.filter((x) => x.outcome === 'succeeded').length === 10 && r;
    });
    // Two at once (while the others waited), so on two processes: each runs one at a time.
    expect(mostAtOnce(ran)).toBe(2);
    expect(new Set(ran.map((r) => r.worker)).size).toBeGreaterThanOrEqual(2);
    for (const p of procs) p.child.kill('SIGTERM');
  });

  it('two heavy jobs on two targets of one cluster never overlap; one on another cluster runs beside one', async () => {
    configure({ heavy: true, concurrency: 4 });
    await workers(2);
    const queue = rt.queues.get('noop');
    const { payloads } = rt.registry.parseRequest('noop', { targets: ['main', 'sibling', 'elsewhere'], sleepMs: 1500 });
    const enqueued = await rt.queues.enqueueEach('noop', payloads);
    const ids = enqueued.map((e) => ('outcome' in e ? e.outcome.job.id! : ''));
    for (const id of ids) expect((await waitForFinished(queue, id, 60_000)).state).toBe('completed');
    const ran = await waitUntil(async () => {
      const r = await runs(ids);
      return r.length === 3 && r.every((x) => x.outcome === 'succeeded') && r;
    });
    const [main, sibling, elsewhere] = ['main', 'sibling', 'elsewhere'].map((t) => ran.find((r) => r.target === t)!);
    expect(overlap(main!, sibling!)).toBe(false);
    expect(overlap(elsewhere!, main!) || overlap(elsewhere!, sibling!)).toBe(true);
    // The one that waited used no attempt: one history row each, attempt 1.
    const { rows } = await h.admin.query(
      `select count(*)::int as n, max(attempt) as attempt from pgmaint.run_history where job_id = any($1)`,
      [ids],
    );
    expect(rows[0]).toEqual({ n: 3, attempt: 1 });
  });

  it("a worker SIGKILLed holding a cluster's permit blocks that cluster only until its lease ends", async () => {
    const queue = rt.queues.get('noop');
    configure({ heavy: true, concurrency: 4 });
    const [first] = await workers(1);
    const { job: held } = await rt.queues.enqueue('noop', { target: 'main', sleepMs: 2500 });
    await waitUntil(async () => (await runs([held.id!])).some((r) => r.outcome === 'running'), 20_000, 'the run');
    const permits = `${rt.config.redis.prefix}:cluster-permits:${rt.config.targets.get('main')!.cluster}`;
    expect(await rt.queues.connection.zcard(permits)).toBe(1);
    await first!.killGroup();

    // A heavy job on the same cluster, and a new worker: it runs once the dead worker's lease has ended.
    const { job: next } = await rt.queues.enqueue('noop', { target: 'sibling', sleepMs: 0 });
    await workers(1);
    expect((await waitForFinished(queue, next.id!, 30_000)).state).toBe('completed');
    // The killed run is taken again (stalled) and completes too, never beside the other.
    expect((await waitForFinished(queue, held.id!, 30_000)).state).toBe('completed');
    const ran = await waitUntil(async () => {
      const r = await runs([held.id!, next.id!]);
      return r.filter((x) => x.outcome === 'succeeded').length === 2 && r;
    });
    const succeeded = ran.filter((r) => r.outcome === 'succeeded');
    expect(overlap(succeeded[0]!, succeeded[1]!)).toBe(false);
    expect(ran.filter((r) => r.job_id === held.id).map((r) => r.outcome)).toEqual(['abandoned', 'succeeded']);
    await waitUntil(async () => (await rt.queues.connection.zcard(permits)) === 0, 10_000, 'the permits given back');
  });
});
