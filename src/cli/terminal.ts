// Everything the CLI prints goes through here. What it prints comes in part from elsewhere
// (a server at PGMAINT_URL, job results and reasons kept in Redis), and a terminal acts on
// control characters: an escape sequence can recolour, move the cursor, retitle the window
// or rewrite what was printed before. So every control character but newline and tab is
// shown as its \uXXXX escape instead, which also keeps --json's output valid JSON (inside a
// string, where it is the same character; JSON.stringify already escapes the C0 range).

/** C0 but tab and newline, DEL, C1, the line and paragraph separators, the bidirectional controls. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point.
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** `text` with each control character a terminal would act on written as its \uXXXX escape. */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Writes to stdout, control characters escaped. */
export function out(text: string): void {
  process.stdout.write(printable(text));
}

/** Writes to stderr, control characters escaped. */
export function err(text: string): void {
  process.stderr.write(printable(text));
}
