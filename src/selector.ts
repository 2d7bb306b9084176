// Kubernetes label selectors: "zone=a,tier in (db,cache),!canary".
// Requirements are joined by commas (AND); operators =, ==, !=, in, notin,
// "key" (exists) and "!key" (does not exist).
import { invalidArgument } from './errors.ts';

export type Requirement =
  | { key: string; op: 'in' | 'notin'; values: string[] }
  | { key: string; op: 'exists' | 'notexists' };

const KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

/** A Kubernetes label key: an optional DNS prefix of at most 253 characters and '/', then a name of at most 63. */
export function isLabelKey(key: string): boolean {
  return key.lastIndexOf('/') <= 253 && KEY.test(key);
}

export function isLabelValue(value: string): boolean {
  return VALUE.test(value);
}

// Far beyond any real selector (Kubernetes' own are a few requirements), and small enough that parsing one, on every
// create and in every check, costs next to nothing: parsing an unbounded one (3.6 MB) held the event loop for seconds.
export const MAX_SELECTOR_LENGTH = 4096;
export const MAX_SELECTOR_REQUIREMENTS = 64;

/** Parses a selector; errors name the field path and the 1-based position. */
export function parseSelector(text: string, field = 'delivery.selector'): Requirement[] {
  // Measured before any parsing, which costs in proportion to the length.
  if (text.length > MAX_SELECTOR_LENGTH) throw invalidArgument([{ field, description: `must be at most ${MAX_SELECTOR_LENGTH} characters (has ${text.length})` }], 'INVALID_SELECTOR');
  const requirements = parseRequirements(text, field);
  if (requirements.length > MAX_SELECTOR_REQUIREMENTS) {
    throw invalidArgument([{ field, description: `must have at most ${MAX_SELECTOR_REQUIREMENTS} requirements (has ${requirements.length})` }], 'INVALID_SELECTOR');
  }
  return requirements;
}

function parseRequirements(text: string, field: string): Requirement[] {
  const tokens = tokenize(text, field);
  const requirements: Requirement[] = [];
  let i = 0;
  const fail = (message: string): never => {
    const position = tokens[i]?.pos ?? text.length + 1;
    throw invalidArgument([{ field, description: `${message} at position ${position}` }], 'INVALID_SELECTOR');
  };
  const next = () => tokens[i++];
  const peek = () => tokens[i];
  const expectKey = (): string => {
    // Peek first so that an error names the offending token's position.
    const token = peek();
    if (!token || token.kind !== 'word') return fail('expected a label key');
    if (!isLabelKey(token.text)) return fail(`invalid label key ${quote(token.text)}`);
    i += 1;
    return token.text;
  };
  const expectValue = (): string => {
    const token = peek();
    if (token?.kind === 'word') {
      i += 1;
      if (!isLabelValue(token.text)) {
        i -= 1;
        return fail(`invalid label value ${quote(token.text)}`);
      }
      return token.text;
    }
    return ''; // an empty value, as in "tier="
  };
  if (tokens.length === 0) return requirements;
  for (;;) {
    if (peek()?.text === '!') {
      next();
      requirements.push({ key: expectKey(), op: 'notexists' });
    } else {
      const key = expectKey();
      const op = peek();
      if (!op || op.text === ',') requirements.push({ key, op: 'exists' });
      else if (op.text === '=' || op.text === '==') {
        next();
        requirements.push({ key, op: 'in', values: [expectValue()] });
      } else if (op.text === '!=') {
        next();
        requirements.push({ key, op: 'notin', values: [expectValue()] });
      } else if (op.kind === 'word' && (op.text === 'in' || op.text === 'notin')) {
        next();
        if (next()?.text !== '(') {
          i -= 1;
          fail(`expected "(" after ${op.text}`);
        }
        // As in Kubernetes, a set needs a value (which may be empty, as in "(a,)").
        if (peek()?.text === ')') fail(`expected a label value: ${op.text} needs at least one`);
        const values = [expectValue()];
        while (peek()?.text === ',') {
          next();
          values.push(expectValue());
        }
        if (next()?.text !== ')') {
          i -= 1;
          fail('expected "," or ")"');
        }
        requirements.push({ key, op: op.text, values });
      } else fail(`unexpected "${op.text}"`);
    }
    const separator = next();
    if (!separator) return requirements;
    if (separator.text !== ',') {
      i -= 1;
      fail(`expected "," but found ${quote(separator.text)}`);
    }
  }
}

interface Token {
  kind: 'word' | 'op';
  text: string;
  pos: number;
}

/** A token for a message, short enough that the position after it survives the details' length bound. */
function quote(text: string): string {
  return `"${text.length > 40 ? `${text.slice(0, 39)}…` : text}"`;
}

function tokenize(text: string, field: string): Token[] {
  const tokens: Token[] = [];
  // ASCII white space only, as Kubernetes: any other character is part of a word, and refused there.
  const re = /[ \t\r\n]+|(==|!=|=|!|\(|\)|,)|([^ \t\r\n=!(),]+)/gy;
  let match: RegExpExecArray | null;
  while (re.lastIndex < text.length && (match = re.exec(text))) {
    if (match[1]) tokens.push({ kind: 'op', text: match[1], pos: match.index + 1 });
    else if (match[2]) tokens.push({ kind: 'word', text: match[2], pos: match.index + 1 });
  }
  if (re.lastIndex < text.length) throw invalidArgument([{ field, description: `unexpected character at position ${re.lastIndex + 1}` }], 'INVALID_SELECTOR');
  return tokens;
}

export function matches(requirements: readonly Requirement[], labels: Record<string, string>): boolean {
  return requirements.every((requirement) => {
    const has = Object.hasOwn(labels, requirement.key);
    switch (requirement.op) {
      case 'exists':
        return has;
      case 'notexists':
        return !has;
      case 'in':
        return has && requirement.values.includes(labels[requirement.key] ?? '');
      case 'notin':
        return !has || !requirement.values.includes(labels[requirement.key] ?? '');
    }
  });
}
