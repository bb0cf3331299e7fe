// A bounded wait whose bound goes away with it. `Promise.race([p, sleep(ms)])` leaves the
// sleep's timer armed after `p` won, and an armed timer keeps the process alive: a command
// that is done would sit out the whole bound before it exits.

/** Waits for `p` (its failure ignored) at most `ms`: true if it settled in time, false if the bound came first. */
export function waitAtMost(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    const settled = () => {
      clearTimeout(timer);
      resolve(true);
    };
    p.then(settled, settled);
  });
}
