// The docs hold together: every link from README.md and docs/ reaches a file (and a
// heading) inside the repository, and every page in docs/ is linked from the README.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../..');
const pages = ['README.md', ...fs.readdirSync(path.join(root, 'docs')).map((f) => `docs/${f}`)];

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
const slug = (heading: string) =>
  heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');

const anchorsOf = (file: string) =>
  new Set([...fs.readFileSync(file, 'utf8').matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!.replace(/`/g, ''))));

describe('docs', () => {
  it('every relative link reaches a file and heading inside the repository', () => {
    const broken: string[] = [];
    for (const page of pages) {
      const text = fs.readFileSync(path.join(root, page), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^https?:/.test(target!)) continue;
        const [file, anchor] = target!.split('#');
        const resolved = file ? path.resolve(path.dirname(path.join(root, page)), file) : path.join(root, page);
        if (!resolved.startsWith(`${root}${path.sep}`) || !fs.existsSync(resolved)) {
          broken.push(`${page}: ${target}`);
          continue;
        }
        if (anchor && !anchorsOf(resolved).has(anchor)) broken.push(`${page}: ${target} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('the README links every page of docs/ and stays short', () => {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    for (const page of pages.filter((p) => p.startsWith('docs/'))) expect(readme, page).toContain(`](${page})`);
    expect(readme.split('\n').length).toBeLessThan(100);
  });
});
