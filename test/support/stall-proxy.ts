// A TCP proxy in front of a server that can stop answering: while stalled it still accepts
// connections (as the kernel does for a process stopped with SIGSTOP, or a network that
// drops what comes back) but passes nothing either way; resumed, it passes what it held, in
// order. What a client sees is a server that went silent, not one that went away.
import net from 'node:net';

export interface StallProxy {
  port: number;
  /** postgres://… (or any URL) with the host and port swapped for the proxy's. */
  via(url: string): string;
  stall(): void;
  resume(): void;
  close(): Promise<void>;
}

export async function startStallProxy(host: string, port: number): Promise<StallProxy> {
  let stalled = false;
  const held: [net.Socket, Buffer][] = [];
  const sockets = new Set<net.Socket>();
  const forward = (from: net.Socket, to: net.Socket) =>
    from.on('data', (d: Buffer) => {
      if (stalled) held.push([to, d]);
      else to.write(d);
    });
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxyPort = (server.address() as net.AddressInfo).port;
  return {
    port: proxyPort,
    via(url) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(proxyPort);
      return u.toString();
    },
    stall() {
      stalled = true;
    },
    resume() {
      stalled = false;
      for (const [to, d] of held.splice(0)) if (!to.destroyed) to.write(d);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
