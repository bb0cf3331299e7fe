// The CLI as bin/pgmaint.js runs it (spawned as `node --import tsx` this file and its arguments),
// watched. As the process exits it tells on stderr the packages it loaded, and how many timers
// set after its answer went off: each is a wait its way out sat through (a bound whose fallback
// was taken, or the losing side of a race left armed, which holds the process until it fires).
// Not a stopwatch: modules and timers are counted.
import { createHook } from 'node:async_hooks';
import { registerHooks } from 'node:module';

const packages = new Set<string>();
registerHooks({
  load(url, context, next) {
    const name = /.*\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1];
    if (name) packages.add(name);
    return next(url, context);
  },
});

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

process.on('exit', () => {
  process.stderr.write(`packages loaded: ${[...packages].sort().join(' ')}\n`);
  process.stderr.write(`timers that went off after the answer: ${wentOff}\n`);
});

const { main } = await import('../../src/cli/main.ts');
await main(process.argv.slice(2));
