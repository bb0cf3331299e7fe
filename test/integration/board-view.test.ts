// Bull Board as a viewer and an admin meet it over HTTP: a run that failed with a stack
// trace and server paths in its reason, its log lines' times, and the favicon a browser
// asks for before anyone signs in.
import fs from 'node:fs';
import path from 'node:path';
import { DateTime } from 'luxon';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { forViewer } from '../../src/http/board-view.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, VIEWER_TOKEN, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let app: ReturnType<typeof createApp>;
let failedId: string;
/** BACKUP_DIR set to a plain file: the backup fails naming a path below it. */
let notADir: string;
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const viewer = { Authorization: `Bearer ${VIEWER_TOKEN}` };
const ZONE = 'Asia/Dhaka';

beforeAll(async () => {
  h = await createHarness('board_view');
  h.configFile({ businessTimeZone: ZONE });
  notADir = path.join(h.dir, 'not-a-directory');
  fs.writeFileSync(notADir, '');
  rt = h.runtime({ schedules: [], env: { BACKUP_DIR: notADir } });
  await rt.history.migrate();
  startWorkers(rt, ['backup']);
  app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
  const { job } = await rt.queues.enqueue('backup', {});
  const done = await waitForFinished(rt.queues.get('backup'), job.id!);
  expect(done.state).toBe('failed');
  failedId = job.id!;
});
afterAll(() => h.close());

/** Everything that shows a server path or a stack frame. */
const leaks = (text: string) =>
  [h.dir, notADir, '/work/', '/tmp/', 'node_modules', 'file://', '    at '].filter((x) => text.includes(x));

describe('Bull Board for a viewer', () => {
  it('a failed run: the admin sees its stack trace; a viewer sees no stack trace and no server path', async () => {
    const job = `/admin/queues/api/queues/backup/${failedId}`;
    const asAdmin = await request(app).get(job).set(admin).expect(200);
    // What there is to hide: a stack trace, and the reason naming the directory.
    expect(asAdmin.body.job.stacktrace.length).toBeGreaterThan(0);
    expect(asAdmin.body.job.stacktrace.join('\n')).toMatch(/\n\s+at /);
    expect(asAdmin.body.job.failedReason).toContain(`${notADir}/dumps/main is not writable`);

    const asViewer = await request(app).get(job).set(viewer).expect(200);
    expect(asViewer.body.job.stacktrace).toEqual([]);
    expect(asViewer.body.job.failedReason).toMatch(/^BACKUP_DIR: …\/main is not writable: ENOTDIR/);
    expect(leaks(asViewer.text)).toEqual([]);
    // The listing the board's page reads, and the run's log lines, hold none either.
    const list = await request(app)
      .get('/admin/queues/api/queues?activeQueue=backup&status=failed&page=1&jobsPerPage=10')
      .set(viewer)
      .expect(200);
    expect(list.text).toContain(failedId);
    expect(leaks(list.text)).toEqual([]);
    const logs = await request(app).get(`${job}/logs`).set(viewer).expect(200);
    expect((logs.body as string[]).join('\n')).toMatch(/failed: BACKUP_DIR: …\/main is not writable/);
    expect(leaks(logs.text)).toEqual([]);
  });

  it("log lines show their time in the business time zone, the admin's and the viewer's", async () => {
    const { logs: stored } = await rt.queues.get('backup').getJobLogs(failedId);
    const instant = /^(\S+Z) /.exec(stored[0]!)![1]!;
    const shown = `${DateTime.fromISO(instant).setZone(ZONE).toFormat('yyyy-MM-dd HH:mm:ss.SSS')} GMT+6 `;
    for (const who of [admin, viewer]) {
      const res = await request(app).get(`/admin/queues/api/queues/backup/${failedId}/logs`).set(who).expect(200);
      const lines = res.body as string[];
      expect(lines).toHaveLength(stored.length);
      expect(lines[0]!.startsWith(shown)).toBe(true);
      expect(lines.every((l) => /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} GMT\+6 /.test(l))).toBe(true);
    }
  });

  it('/favicon.ico answers without a sign-in', async () => {
    await request(app).get('/favicon.ico').expect(204);
    await request(app).get('/favicon.ico').set('Accept', 'image/avif,image/webp,*/*').expect(204);
    await request(app).get('/favicon.ico').set('Accept', 'text/html').expect(204);
  });
});

describe('forViewer', () => {
  it('cuts stack frames and absolute paths; URLs, bucket keys and relative names stay', () => {
    expect(forViewer('Error: boom\n    at run (file:///srv/pgmaint/jobs/backup.ts:12:3)\n    at next (x.js:1:1)')).toBe(
      'Error: boom',
    );
    expect(forViewer("ENOENT: open '/var/lib/pgmaint/backups/dumps/main/a.dump'")).toBe("ENOENT: open '…/a.dump'");
    expect(forViewer('see file:///srv/app/x.ts:3')).toBe('see …/x.ts:3');
    const kept = 'uploaded s3://pgmaint/pgmaint/dumps/main/a.dump.enc; https://minio.internal:9000/b/c; sales.orders';
    expect(forViewer(kept)).toBe(kept);
  });
});
