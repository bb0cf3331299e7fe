// JSON with 64-bit integers. JSON.parse reads every number as a double, so an integer
// past 2^53 comes back rounded (pgBackRest's system-id 7714964812791504461 becomes
// 7714964812791505000). Before parsing, the integer values of the named keys, and any
// integer too large to be exact, are quoted: they arrive as strings of their exact
// digits. Works on every Node version (JSON.parse's reviver `context.source` does not).

/** Strings (whole, escapes included) and numbers: the only tokens the pass looks at. */
const TOKEN = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/** Whether only white space and one colon lie between `from` and `to`: the number is a key's value. */
function colonBetween(text: string, from: number, to: number): boolean {
  let colon = false;
  for (let i = from; i < to; i++) {
    const c = text[i];
    if (c === ':' && !colon) colon = true;
    else if (c !== ' ' && c !== '\n' && c !== '\r' && c !== '\t') return false;
  }
  return colon;
}

/** JSON.parse, with the integers of `stringKeys` (and any integer beyond 2^53) kept exact as strings. */
export function parseJsonExact<T>(text: string, stringKeys: readonly string[] = []): T {
  const keys = new Set(stringKeys);
  let last: { token: string; end: number } | undefined;
  const quoted = text.replace(TOKEN, (token: string, offset: number) => {
    if (token.startsWith('"')) {
      last = { token, end: offset + token.length };
      return token;
    }
    if (!/^-?\d+$/.test(token)) return token;
    const named =
      last !== undefined && colonBetween(text, last.end, offset) && keys.has(JSON.parse(last.token) as string);
    return named || !Number.isSafeInteger(Number(token)) ? `"${token}"` : token;
  });
  return JSON.parse(quoted) as T;
}
