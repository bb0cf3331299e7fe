// The governor of one run: its gates and pacers, its state and reason, what it tells Bull
// Board, the seconds it was held, and the limits past which it stops as deferred. From its
// first gate until it ends it looks at the target's latest reading and the holds by hand
// every checkEveryMs: a critical reading aborts the run at once, whatever it is doing.
import { Transform, type TransformCallback } from 'node:stream';
import { type Gentle, gentleOf } from '../core/gentle.ts';
import { type Deferral, GovernorAbortedError, GovernorDeferredError } from '../core/errors.ts';
import type { GovernorPolicy } from '../core/governor-policy.ts';
import type { GovernedRun, RunGovernorHandle } from '../runner/governor-port.ts';
import type { GateOptions } from '../runner/job-definition.ts';
import type { Board } from './board.ts';
import { type Hold, holdFor, holdText } from './controls.ts';
import { judge, RUNNING, type Verdict, verdictText } from './judge.ts';
import type { TargetSampler } from './sampler.ts';

/** What a run's governor uses of the worker's governor. */
export interface GovernorParts {
  board: Board;
  /** The holds in force, read at most every `maxAgeMs` by this worker. */
  holds(maxAgeMs: number): Promise<Hold[]>;
  worker: string;
}

/** While held, Bull Board gets a reminder line this often; Redis a refreshed entry. */
const REMIND_MS = 60_000;
const REFRESH_MS = 5_000;

type Held = Exclude<Verdict, { state: 'running' }>;

export class RunGovernor implements RunGovernorHandle {
  /** Set once the run is deferred: every later gate and stream stops at once too. */
  deferral?: Deferral;
  private closed = false;
  private live = false;
  private timer?: NodeJS.Timeout;
  private unsubscribe?: () => void;
  private verdicts = { wal: RUNNING, readOnly: RUNNING };
  /** Whether any unit of this run writes WAL (then a standby's lag holds it, and may abort it). */
  private writesWal = false;
  /** Gates and pacers waiting now; the run is held while any is. */
  private waiters = 0;
  private heldSince?: number;
  private shown?: { verdict: Held; at: number; publishedAt: number; unit: string };
  private accountedAt = 0;
  private wakeUp: () => void = () => undefined;
  private woken: Promise<void> = Promise.resolve();
  private lastHolds: Hold[] = [];
  private readonly customErrors = new Set<string>();
  /** A run stops deferred in time to end cleanly before its maximum run time kills it. */
  private readonly endBy: number;

  constructor(
    private readonly parts: GovernorParts,
    private readonly run: GovernedRun,
    private readonly policy: GovernorPolicy,
    private readonly sampler: TargetSampler | undefined,
  ) {
    this.endBy = run.timeoutAt - Math.min(60_000, (run.timeoutAt - Date.now()) / 20);
    this.armWake();
  }

  get deferred(): boolean {
    return this.deferral !== undefined;
  }

  get baseBackupMaxRate(): string | null {
    return this.policy.baseBackupMaxRate;
  }

  get gentle(): Gentle | null {
    return gentleOf(this.policy);
  }

  async gate(unit: string, opts: GateOptions = {}): Promise<void> {
    this.run.signal.throwIfAborted();
    if (this.deferral) throw new GovernorDeferredError(this.deferral);
    if (!opts.readOnly) this.writesWal = true;
    await this.begin();
    if (this.verdictFor(opts.readOnly).state === 'running') return;
    await this.waitWhileHeld(unit, opts, true);
  }

  pacer(unit: string, opts: Pick<GateOptions, 'readOnly'> = {}): Transform {
    const rate = this.gentle?.streamBytesPerSecond ?? null;
    // Under streamMaxRate each chunk waits for its turn (the bytes before it have had their time)
    // before the hold is looked at: a hold that began meanwhile keeps it too.
    let turn = 0;
    const turnOf = (bytes: number) => {
      if (rate === null) return 0;
      const now = Date.now();
      turn = Math.max(turn, now);
      const wait = turn - now;
      turn += (bytes / rate) * 1000;
      return wait;
    };
    const pass = (chunk: Buffer, cb: TransformCallback) => {
      // The common case stays synchronous: a chunk passes while the run is not held.
      if (this.live && this.verdictFor(opts.readOnly).state === 'running') {
        cb(null, chunk);
        return;
      }
      this.begin()
        .then(() => this.waitWhileHeld(unit, opts))
        .then(
          () => cb(null, chunk),
          (err: Error) => cb(err),
        );
    };
    return new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        const wait = turnOf(chunk.length);
        if (wait < 1) {
          pass(chunk, cb);
          return;
        }
        this.sleep(wait).then(
          () => pass(chunk, cb),
          (err: Error) => cb(err),
        );
      },
    });
  }

  /** `ms`, or until the run is aborted (then its reason). */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const { signal } = this.run;
      if (signal.aborted) return reject(signal.reason as Error);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal.reason as Error);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  async close(succeeded: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.unsubscribe?.();
    if (this.live) this.sampler?.setBusy(-1);
    if (this.waiters) this.sampler?.setHeld(-1);
    this.wakeUp();
    try {
      this.account();
      if (this.shown) await this.parts.board.released(this.run.queue, this.run.jobId);
      if (succeeded && !this.deferred) await this.parts.board.caughtUp(this.run.job, this.run.target);
    } catch (err) {
      this.run.logger.warn({ err }, 'governor state of the run not cleared in Redis');
    }
  }

  /** From the first gate or chunk on: the run is active on its target, and its state is looked at. */
  private async begin(): Promise<void> {
    if (this.live || this.closed) return;
    this.live = true;
    this.sampler?.setBusy(1);
    this.unsubscribe = this.sampler?.subscribe(() => void this.evaluate());
    // A reading taken for this run, not one taken before it started.
    await this.sampler?.fresh(0, this.run.signal);
    await this.evaluate();
    this.tick();
  }

  private tick(): void {
    this.timer = setTimeout(() => {
      if (this.closed) return;
      void this.evaluate().finally(() => this.tick());
    }, this.policy.checkEveryMs);
    this.timer.unref();
  }

  private verdictFor(readOnly?: boolean): Verdict {
    return readOnly ? this.verdicts.readOnly : this.verdicts.wal;
  }

  /** The latest reading and holds give the run's verdicts; a critical one aborts it. */
  private async evaluate(): Promise<void> {
    if (this.closed) return;
    try {
      this.lastHolds = await this.parts.holds(this.policy.checkEveryMs);
    } catch {
      // Redis does not answer: the holds last read stand (a hold still ends at its expiry).
    }
    const hold = holdFor(this.lastHolds, this.run.queue, this.run.jobId);
    const note = hold && { reason: holdText(hold) };
    const reading = this.sampler?.latest;
    this.reportCustomError(reading?.customError);
    this.verdicts = {
      wal: judge(reading, this.policy, { hold: note }),
      readOnly: judge(reading, this.policy, { readOnly: true, hold: note }),
    };
    const now = this.verdictFor(!this.writesWal);
    if (now.state === 'critical') this.abortCritical(now);
    this.account();
    this.wakeUp();
    this.armWake();
  }

  /** A custom statement that gives no number holds nothing, but the run's log says so, once per reason. */
  private reportCustomError(why: string | undefined): void {
    if (!why || this.customErrors.has(why) || !this.policy.enabled) return;
    this.customErrors.add(why);
    void this.run
      .report(`governor: customSql failed: ${why}; the custom signal (customMax, customCritical) holds nothing`)
      .catch(() => undefined);
  }

  private armWake(): void {
    this.woken = new Promise<void>((resolve) => (this.wakeUp = resolve));
  }

  private abortCritical(v: Held): void {
    if (this.run.signal.aborted) return;
    void this.run.report(`aborted: ${v.reason} (critical)`).catch(() => undefined);
    this.run.abort(new GovernorAbortedError(`aborted by the load governor at a critical threshold: ${v.reason}`));
  }

  /**
   * Waits until the verdict lets the unit go, the run is aborted, or a limit defers it.
   * Between units (`between`) the run gives back its heavy-job permit and idle sessions
   * while it waits, and takes the permit again before it goes on. Inside a stream it keeps
   * them: the stream's session is mid-statement, its snapshot open until the stream ends.
   */
  private async waitWhileHeld(unit: string, opts: GateOptions, between = false): Promise<void> {
    let waiting = false;
    let prepared = false;
    let released = false;
    try {
      for (;;) {
        this.run.signal.throwIfAborted();
        if (this.deferral) throw new GovernorDeferredError(this.deferral);
        let v = this.verdictFor(opts.readOnly);
        if (v.state === 'running') {
          const why = released
            ? await this.run.holdings?.retake().catch((err: Error) => `waiting for a heavy-job permit: ${err.message}`)
            : undefined;
          if (!why) return;
          v = { state: 'throttled', kind: 'permit', reason: why };
        }
        if (v.state === 'critical') {
          this.abortCritical(v);
          this.run.signal.throwIfAborted();
        }
        if (!prepared) {
          prepared = true;
          await opts.beforeWait?.();
          continue;
        }
        if (!waiting) {
          waiting = true;
          this.enterWait();
        }
        if (between && !released && this.run.holdings) {
          released = true;
          await this.run.holdings
            .release()
            .catch((err: unknown) => this.run.logger.warn({ err }, 'held run: permit or sessions not given back'));
        }
        this.show(v as Held, unit);
        const limit = this.limit(opts.deadline);
        if (Date.now() >= limit.at) throw this.defer(v as Held, unit, limit.text);
        await this.next(limit.at);
      }
    } finally {
      if (waiting) this.leaveWait();
    }
  }

  /** The next evaluation, the limit, or the run's abort: whichever comes first. */
  private async next(limitAt: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    await Promise.race([
      this.woken,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, Math.max(0, limitAt - Date.now()));
        onAbort = resolve;
        this.run.signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
    clearTimeout(timer);
    if (onAbort) this.run.signal.removeEventListener('abort', onAbort);
  }

  private enterWait(): void {
    if (this.waiters++ > 0) return;
    this.heldSince = Date.now();
    this.accountedAt = this.heldSince;
    this.sampler?.setHeld(1);
  }

  private leaveWait(): void {
    if (--this.waiters > 0) return;
    this.account();
    this.sampler?.setHeld(-1);
    const shown = this.shown;
    const since = this.heldSince ?? Date.now();
    this.heldSince = undefined;
    this.shown = undefined;
    if (!shown || this.closed) return;
    const held = Math.round((Date.now() - since) / 1000);
    void this.parts.board.released(this.run.queue, this.run.jobId).catch(() => undefined);
    if (!this.deferred)
      void this.run.report(`running again after ${held} s held (${verdictText(shown.verdict)})`).catch(() => undefined);
  }

  /** The run's state in Redis and Bull Board: at a change of state or reason, and now and then while held. */
  private show(v: Held, unit: string): void {
    const now = Date.now();
    const prev = this.shown;
    const changed = !prev || prev.verdict.state !== v.state || prev.verdict.kind !== v.kind;
    const shown = { verdict: v, unit, at: prev?.at ?? 0, publishedAt: prev?.publishedAt ?? 0 };
    if (changed || now - shown.at >= REMIND_MS) {
      const held = changed ? '' : `, held ${Math.round((now - (this.heldSince ?? now)) / 1000)} s`;
      void this.run.report(`${verdictText(v)}${held} (before ${unit})`).catch(() => undefined);
      shown.at = now;
    }
    if (changed || prev.unit !== unit || now - shown.publishedAt >= REFRESH_MS) {
      shown.publishedAt = now;
      void this.parts.board
        .held({
          queue: this.run.queue,
          jobId: this.run.jobId,
          job: this.run.job,
          target: this.run.target,
          state: v.state as 'throttled' | 'paused',
          kind: v.kind,
          reason: v.reason,
          since: this.heldSince ?? now,
          windowSeconds: this.policy.maxPauseSeconds,
          unit,
          started: true,
          worker: this.parts.worker,
          updatedAt: now,
        })
        .catch(() => undefined);
    }
    this.shown = shown;
  }

  /** Seconds held since the last count, under the reason that held the run. */
  private account(): void {
    if (!this.waiters || !this.shown) return;
    const now = Date.now();
    const seconds = (now - this.accountedAt) / 1000;
    this.accountedAt = now;
    void this.parts.board
      .addSeconds(this.run.job, this.run.target, this.shown.verdict.kind, seconds)
      .catch(() => undefined);
  }

  /** The earliest of: the window (this stretch), the unit's deadline, the run's maximum run time. */
  private limit(deadline?: number): { at: number; text: string } {
    const limits = [
      {
        at: (this.heldSince ?? Date.now()) + this.policy.maxPauseSeconds * 1000,
        text: `its window of ${this.policy.maxPauseSeconds} s (maxPauseSeconds)`,
      },
      { at: this.endBy, text: 'its maximum run time' },
    ];
    if (deadline !== undefined) limits.push({ at: deadline, text: 'its time budget' });
    return limits.reduce((a, b) => (b.at < a.at ? b : a));
  }

  private defer(v: Held, unit: string, limit: string): GovernorDeferredError {
    const deferral: Deferral = {
      reason: verdictText(v),
      limit,
      unit,
      heldSeconds: Math.round((Date.now() - (this.heldSince ?? Date.now())) / 1000),
    };
    this.deferral = deferral;
    const { queue, jobId, job, target } = this.run;
    void this.parts.board.deferred({ queue, jobId, job, target, at: Date.now(), ...deferral }).catch(() => undefined);
    void this.run.report(`deferred by load: ${deferral.reason}; held past ${limit}`).catch(() => undefined);
    return new GovernorDeferredError(deferral);
  }
}
