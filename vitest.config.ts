import { defineConfig } from 'vitest/config';

// Two kinds of tests: test/unit needs no service (`npm run test:unit`); test/integration
// starts its own PostgreSQL, Redis and S3 (test/support/global-setup.ts).
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Files share one PostgreSQL and one Redis (a database and a key prefix each);
    // two at a time fits the 2-core machines this runs on.
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/support/global-setup.ts'],
        },
      },
    ],
  },
});
