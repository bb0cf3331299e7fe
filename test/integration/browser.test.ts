// A person at a browser: signs in to Bull Board with the admin token and finds the
// finished backup with its log lines. Headless Debian Chromium driven by playwright-core.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../../src/http/server.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, waitUntil, type Harness } from '../support/harness.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let h: Harness;
let rt: Runtime;
let browser: Browser;
let base: string;
let port: number;

beforeAll(async () => {
  h = await createHarness('browser');
  await h.admin.query(
    `create table milk_production (id int, litres numeric); insert into milk_production select g, 11.5 from ` +
      `generate_series(1, 100) g`,
  );
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['backup']);
  ({ port } = await startServer(rt, { port: 0, host: '127.0.0.1' }));
  base = `http://127.0.0.1:${port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // pgmaint.test is an ordinary (non-loopback) host name to the browser: plain HTTP there
    // is what an operator gets from compose's published port on another machine.
    args: [
      '--host-resolver-rules=MAP pgmaint.test 127.0.0.1',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});
afterAll(async () => {
  await browser?.close();
  await h.close();
});

describe('Bull Board in a browser', () => {
  it('signs in with the token and shows the finished backup with its log lines', async () => {
    const { job } = await rt.queues.enqueue('backup', {});
    await waitUntil(
      async () => (await (await rt.queues.get('backup').getJob(job.id!))?.getState()) === 'completed',
      60_000,
      'backup to complete',
    );

    const page = await browser.newPage();
    // The board must work with no internet: every request goes to pgmaint itself.
    const requested: string[] = [];
    page.on('request', (r) => requested.push(r.url()));
    await page.goto(`${base}/admin/queues`);
    expect(new URL(page.url()).pathname).toBe('/login');
    await page.fill('#token', ADMIN_TOKEN);
    await Promise.all([page.waitForURL(/\/admin\/queues/), page.click('button[type=submit]')]);

    await page.goto(`${base}/admin/queues/queue/backup?status=completed`);
    await page.getByText(`#${job.id}`, { exact: false }).first().waitFor({ timeout: 20_000 });
    const shot = path.join(h.dir, 'bull-board-backup.png');
    await page.getByRole('tab', { name: 'Logs' }).first().click();
    await page
      .getByText(/backup verified/)
      .first()
      .waitFor({ timeout: 20_000 });
    expect(await page.getByText(/pg_dump of database/).count()).toBeGreaterThan(0);
    await page.screenshot({ path: shot, fullPage: true });
    expect(fs.statSync(shot).size).toBeGreaterThan(10_000);
    expect(requested.length).toBeGreaterThan(5);
    expect(requested.filter((u) => !u.startsWith(`${base}/`))).toEqual([]);
    // Times are in the business zone (Asia/Dhaka), labelled with it, whatever the browser's zone.
    expect(await page.getByText(/\d\d:\d\d:\d\d GMT\+6/).count()).toBeGreaterThan(0);
  });

  it('refuses a wrong token on the login page', async () => {
    const page = await browser.newPage();
    await page.goto(`${base}/login`);
    await page.fill('#token', 'this-is-not-the-token');
    await page.click('button[type=submit]');
    await page.getByRole('alert').waitFor();
    expect(await page.getByRole('alert').textContent()).toMatch(/not valid/);
    // Still signed out: Bull Board sends the browser back to the login page.
    await page.goto(`${base}/admin/queues/queue/backup`);
    expect(new URL(page.url()).pathname).toBe('/login');
  });

  it('signs in over plain HTTP on a host that is not loopback, and a cross-origin form cannot enqueue', async () => {
    const page = await browser.newPage();
    const plain = `http://pgmaint.test:${port}`;
    await page.goto(`${plain}/login`);
    await page.fill('#token', ADMIN_TOKEN);
    await Promise.all([page.waitForURL(`${plain}/admin/queues`), page.click('button[type=submit]')]);
    expect(new URL(page.url()).protocol).toBe('http:');
    const waiting = await rt.queues.get('noop').getWaitingCount();
    // A page on another port of the same host is the same site to SameSite=Strict, so the
    // session cookie goes along with its auto-submitted form: the origin check must refuse it.
    const attacker = http.createServer((_req, res) => {
      res.setHeader('content-type', 'text/html');
      res.end(
        `<form method="post" action="${plain}/api/jobs/noop" enctype="text/plain"><input name='{"sleepMs":1,"x":"' ` +
          `value='"}'></form><script>document.forms[0].submit()</script>`,
      );
    });
    await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve));
    try {
      const attackPort = (attacker.address() as { port: number }).port;
      const response = page.waitForResponse((r) => r.url().startsWith(`${plain}/api/jobs/noop`));
      await page.goto(`http://pgmaint.test:${attackPort}/`);
      expect((await response).status()).toBe(403);
    } finally {
      attacker.close();
    }
    expect(await rt.queues.get('noop').getWaitingCount()).toBe(waiting);
  });
});
