// The engine registry: which BackupEngine a target's `backup.engine` names. Its keys
// are the config schema's engine names, so a name added there fails the type check
// until its engine is listed here.
import type { BackupEngine, EngineName, EngineTarget } from '../engine.ts';
import { NativeEngine } from './native.ts';
import { PgbackrestEngine } from './pgbackrest.ts';

const ENGINES: Record<EngineName, (target: EngineTarget) => BackupEngine> = {
  native: (t) => new NativeEngine(t),
  pgbackrest: (t) => new PgbackrestEngine(t),
};

/** The engine of a target: every backup job dispatches through it, once. */
export function engineFor(target: EngineTarget): BackupEngine {
  return ENGINES[target.backup.engine](target);
}
