import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Files share one PostgreSQL and one Redis (a database and a key prefix each);
    // two at a time fits the 2-core machines this runs on.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
