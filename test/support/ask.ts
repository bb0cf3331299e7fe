// One request to a server under test with a client-side deadline: it answers, or the
// test fails saying which route hung (the outage and stall tests' "answers within 5 s").
import { ADMIN_TOKEN } from './harness.ts';

export const ANSWER_WITHIN_MS = 5000;

export interface Answer {
  status: number;
  text: string;
}

export async function ask(
  base: string,
  method: string,
  url: string,
  body?: { json?: unknown; form?: string },
): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${ADMIN_TOKEN}` };
  let payload: string | undefined;
  if (body?.json !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body.json);
  } else if (body?.form !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    payload = body.form;
  }
  try {
    const res = await fetch(`${base}${url}`, {
      method: method.toUpperCase(),
      headers,
      body: payload,
      redirect: 'manual',
      signal: AbortSignal.timeout(ANSWER_WITHIN_MS),
    });
    return { status: res.status, text: await res.text() };
  } catch (err) {
    throw new Error(`${method.toUpperCase()} ${url} gave no answer within ${ANSWER_WITHIN_MS} ms: ${err}`);
  }
}
