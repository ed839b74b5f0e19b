/**
 * Command-line options defined once: each definition carries what the parser needs (string or boolean, repeatable),
 * what the help shows (value placeholder, description, default, the allowed choices) and how a given value is
 * converted and checked. The usage text of every command is generated from the same definitions that parse its
 * arguments, so the two cannot drift apart.
 */
import { parseArgs } from 'node:util';

/** A misused command line: printed with exit status 2. */
export class UsageError extends Error {}

/** --help: print the command's usage and exit 0. */
export class HelpRequested extends Error {}

/** A value as parseArgs gives it (or a caller of a pure "values -> options" function passes it). */
export type RawValue = string | boolean | string[];

export interface Option<T> {
  /** What parseArgs reads: a string value or a switch. */
  readonly type: 'string' | 'boolean';
  /** Repeatable (--defective A --defective B). */
  readonly multiple?: boolean;
  /** Value placeholder in the help (N, DIR); for choices, the choices joined with '|'. */
  readonly arg?: string;
  readonly help: string;
  /** The default as the help states it (taken from the constants the code uses). */
  readonly default?: string;
  /** The allowed values of an enumeration, in the help and in the error message. */
  readonly choices?: readonly string[];
  /** Absent -> usage error "--NAME is required"; shown in the synopsis. */
  readonly required?: boolean;
  /** Shown (in brackets) in the generated synopsis. */
  readonly synopsis?: boolean;
  /** Heading of the help section the option is listed under (none: the command's first section). */
  readonly section?: string;
  /** The given value, converted and checked; throws a UsageError naming the option. */
  readonly convert: (raw: RawValue, name: string) => T;
}

export type Options = Record<string, Option<unknown>>;

/** The converted values of the options given on a command line (absent ones are undefined). */
export type Values<O extends Options> = { -readonly [K in keyof O]?: O[K] extends Option<infer T> ? T : never };

interface Common {
  default?: string | number;
  required?: boolean;
  synopsis?: boolean;
  section?: string;
}

function common(c: Common | undefined): Partial<Option<unknown>> {
  return {
    default: c?.default === undefined ? undefined : String(c.default),
    required: c?.required,
    synopsis: c?.synopsis,
    section: c?.section,
  };
}

export function invalid(name: string, raw: RawValue, requirement?: string): UsageError {
  const shown = Array.isArray(raw) ? raw.join(' ') : String(raw);
  return new UsageError(`invalid value for --${name}: ${shown}${requirement ? ` (${requirement})` : ''}`);
}

function stringValue(raw: RawValue, name: string): string {
  if (typeof raw !== 'string') throw invalid(name, raw, 'a value is needed');
  return raw;
}

/** A switch: true when given. */
export function flag(help: string, more?: Omit<Common, 'required'>): Option<boolean> {
  return {
    type: 'boolean',
    help,
    ...common(more),
    convert: (raw, name) => {
      if (raw !== true && raw !== false) throw invalid(name, raw, 'a switch takes no value');
      return raw;
    },
  };
}

/** A free string (a path, a name). */
export function text(arg: string, help: string, more?: Common): Option<string> {
  return { type: 'string', arg, help, ...common(more), convert: stringValue };
}

/** A repeatable string option (each occurrence one value). */
export function texts(arg: string, help: string, more?: Common): Option<string[]> {
  return {
    type: 'string',
    multiple: true,
    arg,
    help,
    ...common(more),
    convert: (raw, name) => (Array.isArray(raw) ? raw : [stringValue(raw, name)]),
  };
}

export interface NumberRule {
  integer?: boolean;
  /** value >= min */
  min?: number;
  /** value > above */
  above?: number;
  /** value <= max */
  max?: number;
  /** value < below */
  below?: number;
  multipleOf?: number;
  powerOfTwo?: boolean;
}

/** The rule in words, for the error message: "an integer >= 1", "a number > 0 and <= 4". */
export function describeRule(r: NumberRule): string {
  const parts = [
    r.min !== undefined ? `>= ${r.min}` : '',
    r.above !== undefined ? `> ${r.above}` : '',
    r.max !== undefined ? `<= ${r.max}` : '',
    r.below !== undefined ? `< ${r.below}` : '',
  ].filter(Boolean);
  const range = parts.length ? ` ${parts.join(' and ')}` : '';
  const what = r.powerOfTwo ? 'a power of two' : r.integer ? 'an integer' : 'a number';
  return `${what}${range}${r.multipleOf !== undefined ? `, a multiple of ${r.multipleOf}` : ''}`;
}

export function meetsRule(n: number, r: NumberRule): boolean {
  return (
    Number.isFinite(n) &&
    (!r.integer || Number.isInteger(n)) &&
    (r.min === undefined || n >= r.min) &&
    (r.above === undefined || n > r.above) &&
    (r.max === undefined || n <= r.max) &&
    (r.below === undefined || n < r.below) &&
    (r.multipleOf === undefined || n % r.multipleOf === 0) &&
    (!r.powerOfTwo || (Number.isInteger(n) && n >= 1 && (n & (n - 1)) === 0))
  );
}

/** A number; `rule` is checked and stated in the error message. */
export function number(arg: string, help: string, rule: NumberRule = {}, more?: Common): Option<number> {
  return {
    type: 'string',
    arg,
    help,
    ...common(more),
    convert: (raw, name) => {
      const s = stringValue(raw, name);
      const n = Number(s);
      if (s.trim() === '' || !meetsRule(n, rule)) throw invalid(name, raw, describeRule(rule));
      return n;
    },
  };
}

/** An integer (>= 1 unless the rule says otherwise). */
export function integer(arg: string, help: string, rule: NumberRule = {}, more?: Common): Option<number> {
  return number(arg, help, { min: 1, ...rule, integer: true }, more);
}

/**
 * A size cap in pixels on an image's longer side: a positive integer, or 0 for no cap (null). The default (a
 * number) is applied by the caller; the help states it.
 */
export function maxSide(help: string, fallback: number): Option<number | null> {
  const n = integer('PX', `${help}; 0 = no cap`, { min: 0 }, { default: fallback });
  return {
    ...n,
    convert: (raw, name) => {
      const v = n.convert(raw, name);
      return v === 0 ? null : v;
    },
  };
}

/** One of a fixed set of values (an exported constant array of the type it sets). */
export function choice<const T extends string>(choices: readonly T[], help: string, more?: Common): Option<T> {
  return {
    type: 'string',
    arg: choices.join('|'),
    help,
    choices,
    ...common(more),
    convert: (raw, name) => {
      const s = stringValue(raw, name);
      if (!(choices as readonly string[]).includes(s)) throw invalid(name, raw, `one of ${choices.join(', ')}`);
      return s as T;
    },
  };
}

/** A comma-separated list of values from a fixed set (at least one). */
export function choiceList<const T extends string>(choices: readonly T[], help: string, more?: Common): Option<T[]> {
  return {
    type: 'string',
    arg: 'LIST',
    help: `${help}; comma-separated, of ${choices.join(', ')}`,
    choices,
    ...common(more),
    convert: (raw, name) =>
      stringValue(raw, name)
        .split(',')
        .map((s) => {
          if (!(choices as readonly string[]).includes(s)) throw invalid(name, s, `one of ${choices.join(', ')}`);
          return s as T;
        }),
  };
}

/** A comma-separated list of free names (empty entries dropped; at least one). */
export function nameList(arg: string, help: string, more?: Common): Option<string[]> {
  return {
    type: 'string',
    arg,
    help,
    ...common(more),
    convert: (raw, name) => {
      const list = stringValue(raw, name)
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      if (!list.length) throw invalid(name, raw, 'a comma-separated list of names');
      return list;
    },
  };
}

/** An option with its own conversion (e.g. a pair of numbers). */
export function custom<T>(
  arg: string,
  help: string,
  convert: (s: string, name: string) => T,
  more?: Common,
): Option<T> {
  return { type: 'string', arg, help, ...common(more), convert: (raw, name) => convert(stringValue(raw, name), name) };
}

/** The same options, listed in the help under `title`. */
export function section<O extends Options>(title: string, options: O): O {
  return Object.fromEntries(Object.entries(options).map(([k, o]) => [k, { ...o, section: title }])) as O;
}

/** Converts given values (as parseArgs returns them) with the definitions; unknown names are refused. */
export function convertValues<O extends Options>(options: O, raw: Record<string, RawValue | undefined>): Values<O> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    if (value === undefined) continue;
    const o = options[name];
    if (!o) throw new UsageError(`unknown option --${name}`);
    out[name] = o.convert(value, name);
  }
  return out as Values<O>;
}

export interface CommandSpec<O extends Options> {
  /** The command's name (anoseg NAME). */
  name: string;
  /** One line for the command list of `anoseg --help`. */
  summary: string;
  /** Hand-written synopsis (default: generated from the required and synopsis options). */
  synopsis?: string;
  /** What the command takes after its options (e.g. IMAGE_OR_FOLDER...); none: positionals are refused. */
  positionals?: string;
  /** A paragraph after the synopsis. */
  about?: string;
  options: O;
  /** A paragraph after the options. */
  notes?: string;
}

const COLUMN = 26;
const WIDTH = 118;

function wrap(s: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of s.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  return [...lines, line];
}

function optionLines(name: string, o: Option<unknown>): string[] {
  const left = `  --${name}${o.arg ? ` ${o.arg}` : ''}${o.multiple ? ' (repeatable)' : ''}`;
  const help = `${o.help}${o.default !== undefined ? ` (default ${o.default})` : ''}`;
  const body = wrap(help, WIDTH - COLUMN);
  const indent = ' '.repeat(COLUMN);
  if (left.length + 2 > COLUMN) return [left, ...body.map((l) => indent + l)];
  return [left.padEnd(COLUMN) + body[0], ...body.slice(1).map((l) => indent + l)];
}

/** The option list, section by section, in definition order. */
export function formatOptions(options: Options): string {
  const sections = new Map<string, string[]>();
  for (const [name, o] of Object.entries(options)) {
    const title = o.section ?? 'Options:';
    sections.set(title, [...(sections.get(title) ?? []), ...optionLines(name, o)]);
  }
  return [...sections].map(([title, lines]) => `${title}\n${lines.join('\n')}`).join('\n\n');
}

export function synopsisOf<O extends Options>(spec: CommandSpec<O>): string {
  if (spec.synopsis) return spec.synopsis;
  const entries = Object.entries(spec.options);
  const shown = (o: Option<unknown>): string => (o.arg ? ` ${o.arg}` : '');
  const required = entries.filter(([, o]) => o.required).map(([n, o]) => `--${n}${shown(o)}`);
  const listed = entries.filter(([, o]) => !o.required && o.synopsis).map(([n, o]) => `[--${n}${shown(o)}]`);
  const more = entries.length > required.length + listed.length ? ['[options]'] : [];
  return ['anoseg', spec.name, ...required, ...listed, ...more, ...(spec.positionals ? [spec.positionals] : [])].join(
    ' ',
  );
}

/** A paragraph with its lines wrapped at the help's width. */
function paragraph(s: string): string {
  return s
    .split('\n')
    .flatMap((l) => (l.length > WIDTH ? wrap(l, WIDTH) : [l]))
    .join('\n');
}

/** The whole `anoseg NAME --help` text. */
export function usage<O extends Options>(spec: CommandSpec<O>): string {
  const about = spec.about && paragraph(spec.about);
  const notes = spec.notes && paragraph(spec.notes);
  return [synopsisOf(spec), about, formatOptions(spec.options), notes].filter(Boolean).join('\n\n');
}

/**
 * Parses a command's arguments with its definitions: unknown options, missing values, missing required options
 * and invalid values are UsageErrors (the first three with the usage text), --help is HelpRequested.
 */
export function parseCommand<O extends Options>(
  spec: CommandSpec<O>,
  args: string[],
): { values: Values<O>; positionals: string[] } {
  const config = Object.fromEntries(
    Object.entries(spec.options).map(([name, o]) => [name, { type: o.type, multiple: o.multiple ?? false }]),
  );
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...config, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${usage(spec)}`);
  }
  const { help, ...raw } = parsed.values as Record<string, RawValue | undefined>;
  if (help) throw new HelpRequested(usage(spec));
  if (!spec.positionals && parsed.positionals.length)
    throw new UsageError(`unexpected argument '${parsed.positionals[0]}'\n\n${usage(spec)}`);
  for (const [name, o] of Object.entries(spec.options))
    if (o.required && raw[name] === undefined) throw new UsageError(`--${name} is required\n\n${usage(spec)}`);
  return { values: convertValues(spec.options, raw), positionals: parsed.positionals };
}

/**
 * All values of an enumeration type, listed once: the record must name every member (and nothing else), so the
 * list cannot fall behind the type it is checked against.
 */
export function allOf<T extends string>(members: Record<T, true>): readonly T[] {
  return Object.keys(members) as T[];
}

/** A command of the `anoseg` CLI: its definition (options, help) and what it does with its arguments. */
export interface Command {
  spec: CommandSpec<Options>;
  run: (args: string[]) => Promise<void>;
}
