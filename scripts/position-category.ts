/**
 * Writes a procedural category in MVTec layout whose defects can only be told by position, like MVTec cable's
 * "cable_swap" (the paper's Fig. 8b case for coordinate channels): three coloured discs on a dark board at fixed
 * places (jittered by a few pixels), each disc's colour fixed by its place.
 *   npx tsx scripts/position-category.ts OUT_DIR [size=64] [seed=0]
 * Defect types: 'swap' (two discs exchange colours: each disc still looks like a normal disc, only its place says
 * it is wrong), 'recolour' (one disc takes another disc's colour) and 'stain' (a local colour change on one disc,
 * which needs no position). Masks are the changed discs / the stain.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { encodePng } from '../src/image/io.js';
import { createImage, type Image } from '../src/image/types.js';
import { writeFileAtomic } from '../src/util/atomic.js';
import { Rng } from '../src/util/rng.js';

const [outDir, sizeArg, seedArg] = process.argv.slice(2);
if (!outDir) {
  process.stderr.write('usage: npx tsx scripts/position-category.ts OUT_DIR [size] [seed]\n');
  process.exit(2);
}
const size = Number(sizeArg ?? 64);
const seed = Number(seedArg ?? 0);
if (!(Number.isInteger(size) && size >= 16))
  throw new Error(`position-category: size must be an integer >= 16, got '${sizeArg}'`);
if (!Number.isInteger(seed)) throw new Error(`position-category: seed must be an integer, got '${seedArg}'`);
// never write over an existing data set (its images would be replaced file by file)
for (const sub of ['train', 'test', 'ground_truth']) {
  if (existsSync(path.join(outDir, sub)))
    throw new Error(`position-category: ${path.join(outDir, sub)} already exists`);
}
const rng = new Rng(seed);
const COLOURS: [number, number, number][] = [
  [0.2, 0.7, 0.25], // green
  [0.2, 0.35, 0.8], // blue
  [0.75, 0.7, 0.2], // yellow
];
const PLACES = [
  [0.3, 0.32],
  [0.7, 0.32],
  [0.5, 0.7],
];

interface Disc {
  x: number;
  y: number;
  r: number;
  colour: [number, number, number];
}

function layout(r: Rng): Disc[] {
  return PLACES.map(([px, py], i) => ({
    x: px * size + r.uniform(-1.5, 1.5),
    y: py * size + r.uniform(-1.5, 1.5),
    r: 0.16 * size * r.uniform(0.95, 1.05),
    colour: COLOURS[i],
  }));
}

function render(discs: Disc[], r: Rng, stain?: { x: number; y: number; r: number }): { img: Image; mask: Image } {
  const img = createImage(3, size, size);
  const mask = createImage(1, size, size);
  const n = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let rgb = [0.12, 0.12, 0.14];
      for (const d of discs) {
        const t = Math.hypot(x - d.x, y - d.y) / d.r;
        // a rounded conductor: brighter in the middle, with a dark insulation ring at the rim
        if (t <= 1) rgb = t > 0.85 ? [0.08, 0.08, 0.08] : d.colour.map((c) => c * (0.8 + 0.25 * (1 - t * t)));
      }
      if (stain && Math.hypot(x - stain.x, y - stain.y) <= stain.r) {
        rgb = rgb.map((c) => (c < 0.5 ? c + 0.35 : c - 0.35));
        mask.data[y * size + x] = 1;
      }
      for (let c = 0; c < 3; c++)
        img.data[c * n + y * size + x] = Math.min(1, Math.max(0, rgb[c] + r.normal(0, 0.015)));
    }
  }
  return { img, mask };
}

function discMask(discs: Disc[], which: number[]): Image {
  const mask = createImage(1, size, size);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      if (which.some((i) => Math.hypot(x - discs[i].x, y - discs[i].y) <= discs[i].r)) mask.data[y * size + x] = 1;
  return mask;
}

const writes: Promise<void>[] = [];
const save = (file: string, img: Image) => writes.push(encodePng(img).then((png) => writeFileAtomic(file, png)));
const name = (i: number) => String(i).padStart(3, '0');
for (let i = 0; i < 200; i++)
  save(path.join(outDir, 'train/good', `${name(i)}.png`), render(layout(rng.fork()), rng.fork()).img);
for (let i = 0; i < 40; i++)
  save(path.join(outDir, 'test/good', `${name(i)}.png`), render(layout(rng.fork()), rng.fork()).img);
for (let i = 0; i < 20; i++) {
  for (const type of ['swap', 'recolour', 'stain'] as const) {
    const r = rng.fork();
    const discs = layout(r);
    const a = r.int(0, 2);
    const b = (a + 1 + r.int(0, 1)) % 3;
    let out: { img: Image; mask: Image };
    if (type === 'swap') {
      [discs[a].colour, discs[b].colour] = [discs[b].colour, discs[a].colour];
      out = { img: render(discs, r).img, mask: discMask(discs, [a, b]) };
    } else if (type === 'recolour') {
      discs[a].colour = discs[b].colour;
      out = { img: render(discs, r).img, mask: discMask(discs, [a]) };
    } else {
      const d = discs[a];
      out = render(discs, r, {
        x: d.x + r.uniform(-0.3, 0.3) * d.r,
        y: d.y + r.uniform(-0.3, 0.3) * d.r,
        r: d.r * r.uniform(0.25, 0.4),
      });
    }
    save(path.join(outDir, 'test', type, `${name(i)}.png`), out.img);
    save(path.join(outDir, 'ground_truth', type, `${name(i)}_mask.png`), out.mask);
  }
}
await Promise.all(writes);
process.stdout.write(`wrote ${outDir}: 200 train, 40 good + 60 defective test images at ${size} px\n`);
