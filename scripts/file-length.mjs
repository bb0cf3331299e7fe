// Fails when a file of the application (src/, jobs/, workers/, schedules/, bin/) has
// more than 400 lines: past that, split it by concern (docs/development.md). Tests,
// bench/ and scripts/ are exempt. Usage: node scripts/file-length.mjs [root]
import fs from 'node:fs';
import path from 'node:path';

const MAX_LINES = 400;
const DIRS = ['src', 'jobs', 'workers', 'schedules', 'bin'];
const root = path.resolve(process.argv[2] ?? '.');

/** Every regular file under dir, as paths relative to root. */
function filesUnder(dir) {
  if (!fs.existsSync(path.join(root, dir))) return [];
  return fs.readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = path.join(dir, entry.name);
    if (entry.isDirectory()) return filesUnder(rel);
    return entry.isFile() ? [rel] : [];
  });
}

/** Lines as `wc -l` counts them, plus a last line without its newline. */
function lineCount(text) {
  if (text === '') return 0;
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
}

let long = 0;
for (const file of DIRS.flatMap(filesUnder).sort()) {
  const lines = lineCount(fs.readFileSync(path.join(root, file), 'utf8'));
  if (lines > MAX_LINES) {
    long++;
    console.error(`${file}: ${lines} lines (at most ${MAX_LINES}; split it by concern)`);
  }
}
process.exit(long ? 1 : 0);
