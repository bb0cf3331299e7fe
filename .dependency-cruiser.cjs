// Which layer may import which (docs/architecture.md), and no import cycles.
// Checked by `npm run lint:deps`, part of `npm test`.
/** @type {import('dependency-cruiser').IConfiguration} */
const layer = (from, allowed, comment) => ({
  name: `layer-${from.replace(/[^a-z]/g, '')}`,
  comment,
  severity: 'error',
  from: { path: `^${from}` },
  to: { path: '^(src|jobs|schedules|workers)/', pathNot: `^(${[from, ...allowed].join('|')})` },
});

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'import cycles make the layers meaningless',
      from: {},
      to: { circular: true },
    },
    layer('src/core/', [], 'core: configuration, errors, SQL quoting, processes; imports no other layer'),
    layer('src/runner/', ['src/core/'], 'the runner knows no job, backup or monitoring code'),
    layer('src/backup/', ['src/core/', 'src/runner/job-definition'], 'backup toolkit'),
    layer('src/partitions/', ['src/core/', 'src/runner/job-definition'], 'partition library'),
    layer('jobs/', ['src/core/', 'src/runner/job-definition', 'src/backup/', 'src/partitions/'], 'one job per file'),
    layer('schedules/', ['src/core/', 'src/runner/scheduler'], 'schedules are data'),
    layer('src/governor/', ['src/core/', 'src/runner/'], 'the load governor: signals, holds by hand, held runs'),
    layer(
      'src/monitoring/',
      ['src/core/', 'src/runner/', 'src/backup/', 'src/partitions/', 'src/governor/', 'jobs/'],
      'monitoring reads shared state, and job results through the types jobs export',
    ),
    layer(
      'src/http/',
      ['src/core/', 'src/runner/', 'src/backup/', 'src/governor/', 'src/monitoring/'],
      'HTTP API and Bull Board',
    ),
    layer('src/dev/', ['src/core/'], 'demo and dev stack helpers'),
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
