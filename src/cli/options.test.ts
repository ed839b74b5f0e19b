import { describe, expect, it } from 'vitest';
import {
  HelpRequested,
  UsageError,
  allOf,
  choice,
  choiceList,
  convertValues,
  describeRule,
  flag,
  formatOptions,
  integer,
  maxSide,
  nameList,
  number,
  parseCommand,
  section,
  text,
  texts,
  usage,
  type CommandSpec,
  type Options,
} from './options.js';

describe('option definitions', () => {
  it('numbers: the rule is checked and stated in the message', () => {
    const batch = integer('N', 'images per step', { min: 2 });
    expect(batch.convert('8', 'batch')).toBe(8);
    for (const bad of ['1', '2.5', '', ' ', 'eight', 'Infinity'])
      expect(() => batch.convert(bad, 'batch')).toThrow(UsageError);
    expect(() => batch.convert('1', 'batch')).toThrow('invalid value for --batch: 1 (an integer >= 2)');
    const lr = number('LR', 'learning rate', { above: 0, below: 1 });
    expect(lr.convert('1e-3', 'lr')).toBe(0.001);
    expect(() => lr.convert('1', 'lr')).toThrow('invalid value for --lr: 1 (a number > 0 and < 1)');
    const res = integer('PX', 'input size', { min: 32, powerOfTwo: true });
    expect(res.convert('64', 'resolution')).toBe(64);
    expect(() => res.convert('96', 'resolution')).toThrow('(a power of two >= 32)');
    expect(describeRule({ integer: true, min: 32, multipleOf: 16 })).toBe('an integer >= 32, a multiple of 16');
  });

  it('size caps: 0 is no cap (null)', () => {
    const o = maxSide('longer side', 2048);
    expect(o.convert('0', 'max-side')).toBeNull();
    expect(o.convert('512', 'max-side')).toBe(512);
    expect(() => o.convert('-1', 'max-side')).toThrow('invalid value for --max-side: -1');
    expect(o.default).toBe('2048');
  });

  it('choices and lists name the allowed values', () => {
    const o = choice(['l1', 'focal'] as const, 'loss');
    expect(o.arg).toBe('l1|focal');
    expect(o.convert('focal', 'seg-loss')).toBe('focal');
    expect(() => o.convert('dice', 'seg-loss')).toThrow('invalid value for --seg-loss: dice (one of l1, focal)');
    const list = choiceList(['rect', 'gmm'] as const, 'shapes');
    expect(list.convert('gmm,rect', 'mixed-shapes')).toEqual(['gmm', 'rect']);
    expect(() => list.convert('gmm,star', 'mixed-shapes')).toThrow('invalid value for --mixed-shapes: star');
    const names = nameList('A,B', 'names');
    expect(names.convert(' a, b ,', 'held-out')).toEqual(['a', 'b']);
    expect(() => names.convert(',', 'held-out')).toThrow(UsageError);
    expect(texts('DIR', 'folders').convert(['a', 'b'], 'defective')).toEqual(['a', 'b']);
  });

  it('allOf lists the members of a type once, in order', () => {
    expect(allOf<'a' | 'b'>({ a: true, b: true })).toEqual(['a', 'b']);
  });

  it('convertValues refuses names it does not define', () => {
    const o = { steps: integer('N', 'steps') };
    expect(convertValues(o, { steps: '3' })).toEqual({ steps: 3 });
    expect(() => convertValues(o, { epochs: '3' })).toThrow('unknown option --epochs');
  });
});

describe('help text and parsing', () => {
  const spec = {
    name: 'demo-cmd',
    summary: 'a command',
    positionals: 'FILE...',
    about: 'Does things.',
    options: {
      data: text('DIR', 'the data', { required: true }),
      format: choice(['png', 'tiff'], 'map format', { default: 'tiff', synopsis: true }),
      verbose: flag('say more'),
      ...section('Tuning:', {
        steps: integer('N', 'a long description that goes on and on '.repeat(4).trim(), {}, { default: 10 }),
      }),
    },
  } satisfies CommandSpec<Options>;

  it('generates the synopsis, the sections, defaults and wrapped descriptions', () => {
    const text = usage(spec);
    expect(text.split('\n')[0]).toBe('anoseg demo-cmd --data DIR [--format png|tiff] [options] FILE...');
    expect(text).toContain('Does things.');
    expect(text).toMatch(/^ {2}--format png\|tiff +map format \(default tiff\)$/m);
    expect(text).toMatch(/^ {2}--verbose +say more$/m);
    expect(text).toContain('\n\nTuning:\n  --steps N');
    expect(text).toContain('(default 10)');
    for (const line of text.split('\n')) expect(line.length).toBeLessThanOrEqual(118);
    expect(formatOptions({ x: flag('x') })).toBe('Options:\n  --x                     x');
  });

  it('parses, converts and checks', () => {
    expect(parseCommand(spec, ['--data', 'd', '--steps', '4', '--verbose', 'a.png'])).toEqual({
      values: { data: 'd', steps: 4, verbose: true },
      positionals: ['a.png'],
    });
    expect(() => parseCommand(spec, ['--steps', '4'])).toThrow(/--data is required\n\nanoseg demo-cmd/);
    expect(() => parseCommand(spec, ['--data', 'd', '--epochs', '4'])).toThrow(/--epochs/);
    expect(() => parseCommand(spec, ['--data', 'd', '--steps', 'x'])).toThrow('invalid value for --steps: x');
    expect(() => parseCommand(spec, ['--data', 'd', '-h'])).toThrow(HelpRequested);
    const noPositionals = { ...spec, positionals: undefined };
    expect(() => parseCommand(noPositionals, ['--data', 'd', 'stray'])).toThrow("unexpected argument 'stray'");
  });
});
