import { pino, type DestinationStream, type Logger } from 'pino';
import { redact } from './redact.ts';

export type { Logger };

/** `destination` defaults to stdout (tests capture into a buffer). */
export function createLogger(
  level: string,
  base: Record<string, unknown> = {},
  destination?: DestinationStream,
): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { pid: process.pid, ...base },
    // Structured fields that may hold secrets are removed outright; free text is scrubbed below.
    redact: {
      paths: [
        'password',
        '*.password',
        'url',
        '*.url',
        'connectionString',
        '*.connectionString',
        'token',
        '*.token',
        'req.headers.authorization',
        'req.headers.cookie',
        'headers.authorization',
        'headers.cookie',
      ],
      censor: '[redacted]',
    },
    hooks: {
      logMethod(args, method) {
        method.apply(this, args.map((a) => (typeof a === 'string' ? redact(a) : a)) as Parameters<typeof method>);
      },
    },
    formatters: {
      log(obj) {
        const err = obj.err as Error | undefined;
        if (err && typeof err.message === 'string')
          obj.err = { type: err.name, message: redact(err.message), code: (err as { code?: string }).code };
        return obj;
      },
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
