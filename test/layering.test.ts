/**
 * The dependency direction of src/ (README, "Layout"): a module imports only from its own folder and from folders
 * of lower layers, statically or dynamically. Methods (src/methods/<method>/) are self-contained: one method imports
 * another only where it is built on it (the detector on AnoSeg); the registry src/methods/load.ts opens every
 * method's files. The few exceptions below are named with their reason.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** Layer of each top-level folder of src/ (lower first); folders of one layer do not import each other. */
const LAYERS: Record<string, number> = {
  util: 0,
  engine: 1,
  nn: 2,
  image: 3,
  data: 4,
  synth: 4,
  models: 5,
  eval: 6,
  train: 7,
  methods: 8,
  onnx: 9,
  experiments: 10,
  service: 11,
  cli: 12,
  '.': 13, // src/index.ts, the library's entry point
};

/**
 * Method folders that may import another method: the AnoSeg + detector model is built on AnoSeg; the ensemble's
 * default pairing fits PaDiM beside a trained AnoSeg model (members are otherwise opened through an injected loader).
 */
const METHOD_DEPENDENCIES: Record<string, string[]> = { detector: ['anoseg'], ensemble: ['padim'] };

/** Imports allowed against the layers, with why. */
const EXCEPTIONS: { from: string; to: string; why: string }[] = [
  {
    from: 'methods/load.ts',
    to: 'onnx/predictor.ts',
    why: 'loadPredictor opens .onnx files with the ONNX Runtime predictor (a dynamic import; it needs no method)',
  },
];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [p] : [];
  });
}

/** Relative module specifiers of a file: import / export ... from, import('...'), import '...'. */
function specifiers(text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s+|\bimport\s*\(\s*|\bimport\s+)(['"])(\.{1,2}\/[^'"]+)\1/g;
  for (const m of text.matchAll(re)) out.push(m[2]);
  return out;
}

const rel = (p: string): string => path.relative(SRC, p).split(path.sep).join('/');
const folderOf = (r: string): string => (r.includes('/') ? r.split('/')[0] : '.');
const methodOf = (r: string): string | null =>
  r.startsWith('methods/') && r.split('/').length > 2 ? r.split('/')[1] : null;

function violations(): string[] {
  const problems: string[] = [];
  for (const file of sourceFiles(SRC)) {
    const from = rel(file);
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      const to = rel(path.resolve(path.dirname(file), spec)).replace(/\.js$/, '.ts');
      if (to.startsWith('..')) {
        problems.push(`${from} imports ${spec}, outside src/`);
        continue;
      }
      if (EXCEPTIONS.some((e) => e.from === from && e.to === to)) continue;
      const [a, b] = [folderOf(from), folderOf(to)];
      if (!(a in LAYERS) || !(b in LAYERS)) {
        problems.push(`${from} -> ${to}: folder without a layer (add it to LAYERS and the README)`);
        continue;
      }
      if (a === b) {
        const [ma, mb] = [methodOf(from), methodOf(to)];
        // the registry (files directly in methods/) opens every method; a method does not import the registry
        if (ma !== null && mb === null && b === 'methods')
          problems.push(`${from} -> ${to}: a method imports the registry`);
        if (ma !== null && mb !== null && ma !== mb && !METHOD_DEPENDENCIES[ma]?.includes(mb))
          problems.push(`${from} -> ${to}: a method imports another method (${mb})`);
        continue;
      }
      if (LAYERS[b] >= LAYERS[a])
        problems.push(`${from} (${a}, layer ${LAYERS[a]}) -> ${to} (${b}, layer ${LAYERS[b]})`);
    }
  }
  return problems;
}

describe('layering', () => {
  it('no module imports from its own or a higher layer, and methods import only the methods they build on', () => {
    expect(violations()).toEqual([]);
  });

  it('knows every folder of src/', () => {
    const folders = readdirSync(SRC, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
    expect(folders.filter((f) => !(f in LAYERS))).toEqual([]);
  });

  it('reads static and dynamic imports', () => {
    expect(specifiers(`import { a } from '../cli/main.js';\nconst m = await import('./x.js');`)).toEqual([
      '../cli/main.js',
      './x.js',
    ]);
  });
});
