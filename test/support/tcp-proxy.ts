// A TCP proxy in front of a real service (Redis, PostgreSQL, a pgmaint server) that a test
// can break at a chosen moment: frozen (connections stay open and nothing is forwarded any
// more, as with a SIGSTOPped Redis, whose kernel still accepts connections) or gone (every
// connection closed and no new one accepted, as with a stopped Redis). `afterFirstPong`
// breaks it right after the first `+PONG` went back to a client: a CLI's check of Redis
// passed, and Redis stops answering the moment after.
import net from 'node:net';

export type Breakage = 'freeze' | 'gone';

export interface TcpProxy {
  port: number;
  /** `redis://127.0.0.1:<port>` (for a Redis behind it). */
  redisUrl: string;
  /** Resolves once the proxy is broken (by a call, or after the first +PONG). */
  broken: Promise<Breakage>;
  freeze(): void;
  gone(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpProxy(
  upstream: { host?: string; port: number },
  opts: { afterFirstPong?: Breakage } = {},
): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let state: 'forwarding' | Breakage = 'forwarding';
  let announce: (b: Breakage) => void = () => undefined;
  const broken = new Promise<Breakage>((resolve) => (announce = resolve));

  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    // Frozen: the connection is accepted (the kernel's backlog) and never answered.
    if (state !== 'forwarding') return;
    const service = net.connect({ host: upstream.host ?? '127.0.0.1', port: upstream.port });
    sockets.add(service);
    service.on('close', () => {
      sockets.delete(service);
      if (state === 'forwarding') client.destroy();
    });
    service.on('error', () => undefined);
    client.on('close', () => {
      if (state === 'forwarding') service.destroy();
    });
    client.on('data', (chunk: Buffer) => {
      if (state === 'forwarding') service.write(chunk);
    });
    service.on('data', (chunk: Buffer) => {
      if (state !== 'forwarding') return;
      client.write(chunk);
      if (opts.afterFirstPong && chunk.includes('+PONG\r\n')) {
        if (opts.afterFirstPong === 'freeze') proxy.freeze();
        // The PONG leaves first: end() sends what is written, then closes.
        else void proxy.gone();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;

  const proxy: TcpProxy = {
    port,
    redisUrl: `redis://127.0.0.1:${port}`,
    broken,
    freeze() {
      if (state !== 'forwarding') return;
      state = 'freeze';
      announce('freeze');
    },
    async gone() {
      if (state === 'gone') return;
      state = 'gone';
      announce('gone');
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.end(() => s.destroy());
      await closed;
    },
    async close() {
      state = state === 'forwarding' ? 'gone' : state;
      for (const s of sockets) s.destroy();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
