// What Bull Board's API answers, shaped for who asks. Its log lines carry the UTC instant
// a run wrote them; they are shown in the business time zone, like every other time on
// the board. A viewer sees no stack trace and no server file path: the board's job
// `stacktrace` is emptied, stack frames are cut from any text, and an absolute path
// becomes "…/" and its last part (a failed run's reason, a result's file, a log line).
import type { NextFunction, Request, Response } from 'express';
import { DateTime } from 'luxon';

/** The board's route for a job's log lines, below BOARD_PATH. */
const LOGS_ROUTE = /^\/api\/queues\/[^/]+\/[^/]+\/logs$/;

/** A log line's leading instant, as the run context writes it (Date.toISOString). */
const LOG_INSTANT = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)(?= )/;

/** Stack frames ("    at fn (file:line:col)"), whole lines. */
const STACK_FRAME = /\n\s+at [^\n]*(?=\n|$)/g;

/**
 * An absolute path of two parts or more (or a file:// URL): a slash not preceded by a
 * word character, a slash or a dot, so URLs (http://host/…, s3://bucket/key) and
 * relative names are left alone. Its last part stays.
 */
const ABSOLUTE_PATH = /(?:\bfile:\/\/|(?<![\w/.]))\/(?:[^\s/'"`()[\]{},;:]+\/)+([^\s/'"`()[\]{},;:]*)/g;

/** Text a viewer may see: no stack frames, no server paths. */
export function forViewer(text: string): string {
  return text.replace(STACK_FRAME, '').replace(ABSOLUTE_PATH, (_path, last: string) => `…/${last}`);
}

/** A log line with its leading UTC instant shown in `zone` ("2026-05-02 12:00:00.123 GMT+6"). */
export function logLineIn(line: string, zone: string): string {
  return line.replace(LOG_INSTANT, (iso) =>
    DateTime.fromISO(iso, { zone: 'utc' }).setZone(zone).toFormat('yyyy-MM-dd HH:mm:ss.SSS ZZZZ'),
  );
}

function viewerCopy(value: unknown): unknown {
  if (typeof value === 'string') return forViewer(value);
  if (Array.isArray(value)) return value.map(viewerCopy);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, k === 'stacktrace' && Array.isArray(v) ? [] : viewerCopy(v)]),
    );
  }
  return value;
}

/** Middleware before the board's router: rewrites what its API sends as JSON. */
export function boardView(zone: string) {
  return (req: Request, res: Response, next: NextFunction) => {
    const viewer = req.role !== 'admin';
    const logs = LOGS_ROUTE.test(req.path);
    if (!viewer && !logs) {
      next();
      return;
    }
    const json = res.json.bind(res);
    res.json = (body?: unknown) => {
      let shown = body;
      if (logs && Array.isArray(shown))
        shown = shown.map((line) => (typeof line === 'string' ? logLineIn(line, zone) : line));
      return json(viewer ? viewerCopy(shown) : shown);
    };
    next();
  };
}
