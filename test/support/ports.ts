import net from 'node:net';

/**
 * A port where nothing listens, below the ephemeral range (32768–60999): a connection to a port in
 * that range can be given the same port as its own source and connect to itself, and other tests'
 * services and clients take ports there (a client then meets "Connection terminated", not a refusal).
 */
export async function closedPort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const srv = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (!free) continue;
    await new Promise((resolve) => srv.close(resolve));
    return port;
  }
}
