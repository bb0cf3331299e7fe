// `pgmaint demo` as a person starts it: a taken port is named before anything starts,
// port 3000 taken means another port, the banner is the last thing on the screen,
// and Ctrl-C leaves no PostgreSQL or Redis behind.
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness } from './support/harness.ts';

let h: Harness;
beforeAll(async () => {
  h = await createHarness('demo');
});
afterAll(() => h.close());

/** Listens on a port (0: any) until closed. */
async function occupy(port: number): Promise<net.Server | undefined> {
  const srv = net.createServer();
  return new Promise((resolve) => {
    srv.once('error', () => resolve(undefined));
    srv.listen(port, '0.0.0.0', () => resolve(srv));
  });
}

const processesUnder = (dir: string) =>
  execFileSync('ps', ['-eo', 'args'])
    .toString()
    .split('\n')
    .filter((l) => l.includes(dir));

describe('pgmaint demo', () => {
  it('a PORT that is taken is refused, naming it, before any server starts', async () => {
    const blocker = (await occupy(0))!;
    const port = (blocker.address() as net.AddressInfo).port;
    const dir = path.join(h.dir, 'demo-taken');
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: String(port) });
    expect(await demo.exited).toBe(2);
    expect(demo.output()).toMatch(
      new RegExp(`^pgmaint: PORT: ${port} is already in use on 0\\.0\\.0\\.0; choose`, 'm'),
    );
    expect(processesUnder(dir)).toEqual([]);
    blocker.close();
  });

  it('with port 3000 taken it takes a free port, prints the banner last, and Ctrl-C stops everything', async () => {
    // Whoever holds 3000 (this test, or something else on the machine), the demo must not fail on it.
    const blocker = await occupy(3000);
    const dir = path.join(h.dir, 'demo-free');
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '', LOG_LEVEL: '' });
    try {
      await demo.waitFor(/Ctrl-C stops everything/, 120_000);
      expect(demo.output()).toMatch(/^port 3000 is in use; the demo listens on \d+ instead/m);
      const url = /Bull Board: (http:\/\/\S+)\/admin\/queues/.exec(demo.output())![1]!;
      expect(url).not.toMatch(/:3000$/);
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      // Schedules sync, workers start, jobs may run: nothing is logged under the banner at the default level.
      await sleep(2000);
      expect(demo.output().trimEnd()).toMatch(/Ctrl-C stops everything\.$/);
      demo.child.kill('SIGINT');
      expect(await demo.exited).toBe(0);
      expect(processesUnder(dir)).toEqual([]);
    } finally {
      blocker?.close();
      await demo.killGroup();
    }
  }, 180_000);
});
