// The CLI as bin/pgmaint.js runs it (spawned as `node --import tsx` this file and its arguments),
// telling on stderr, as the process exits, how many timers set after its answer went off: each
// is a wait its way out sat through (a bound whose fallback was taken, or the losing side of a
// race left armed, which holds the process until it fires). Not a stopwatch: timers are counted.
import { createHook } from 'node:async_hooks';
import { main } from '../../src/cli/main.ts';

let answered = false;
const write = process.stdout.write.bind(process.stdout);
process.stdout.write = ((...args: Parameters<typeof write>) => {
  answered = true;
  return write(...args);
}) as typeof process.stdout.write;

const setAfterAnswer = new Set<number>();
let wentOff = 0;
createHook({
  init(id, type) {
    if (answered && type === 'Timeout') setAfterAnswer.add(id);
  },
  before(id) {
    if (setAfterAnswer.delete(id)) wentOff++;
  },
}).enable();
process.on('exit', () => process.stderr.write(`timers that went off after the answer: ${wentOff}\n`));

await main(process.argv.slice(2));
