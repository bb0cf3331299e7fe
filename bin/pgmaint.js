#!/usr/bin/env node
// Launcher: pgmaint is shipped as TypeScript and run through tsx's ESM loader,
// so `npx pgmaint` works right after `npm ci` with no build step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv.slice(2));
