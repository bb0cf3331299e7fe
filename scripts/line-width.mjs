// Fails when a tracked source line is wider than 120 columns: Biome's formatter
// keeps code within that width but cannot break a long string or comment.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

const files = execFileSync('git', ['ls-files', '*.ts', '*.js', '*.mjs', '*.cjs'], { encoding: 'utf8' })
  .split('\n')
  .filter((f) => f && fs.existsSync(f));
let wide = 0;
for (const file of files) {
  fs.readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.length > 120) {
        wide++;
        console.error(`${file}:${i + 1}: ${line.length} columns (at most 120)`);
      }
    });
}
process.exit(wide ? 1 : 0);
