/**
 * The procedural noise of the synthesisers, row-major height x width, reproducible from the Rng:
 *  - perlinNoise: Perlin gradient noise (about [-0.7, 0.7]), for anomaly region shapes and CutPaste textures;
 *  - valueNoise: smoothstep-interpolated value noise ([-1, 1]), for formula defects and base textures.
 */
import type { Rng } from '../util/rng.js';

/** 2-D Perlin gradient noise on an h x w grid with `cells` lattice cells along the longer side; about [-0.7, 0.7]. */
export function perlinNoise(height: number, width: number, cells: number, rng: Rng): Float32Array {
  const step = Math.max(height, width) / cells;
  const gh = Math.ceil(height / step) + 1;
  const gw = Math.ceil(width / step) + 1;
  const gx = new Float32Array(gh * gw);
  const gy = new Float32Array(gh * gw);
  for (let i = 0; i < gh * gw; i++) {
    const a = rng.uniform(0, 2 * Math.PI);
    gx[i] = Math.cos(a);
    gy[i] = Math.sin(a);
  }
  const fade = (t: number) => t * t * t * (t * (t * 6 - 15) + 10);
  const out = new Float32Array(height * width);
  for (let y = 0; y < height; y++) {
    const fy = (y + 0.5) / step;
    const y0 = Math.floor(fy);
    const ty = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = (x + 0.5) / step;
      const x0 = Math.floor(fx);
      const tx = fx - x0;
      const dot = (iy: number, ix: number) => {
        const g = (y0 + iy) * gw + x0 + ix;
        return gx[g] * (tx - ix) + gy[g] * (ty - iy);
      };
      const u = fade(tx);
      const v = fade(ty);
      const top = dot(0, 0) * (1 - u) + dot(0, 1) * u;
      const bot = dot(1, 0) * (1 - u) + dot(1, 1) * u;
      out[y * width + x] = top * (1 - v) + bot * v;
    }
  }
  return out;
}

/**
 * Smooth value noise in [-1, 1]: random lattice values every `cell` pixels (random sub-cell offset), smoothstep-
 * interpolated. Row-major height x width.
 */
export function valueNoise(height: number, width: number, cell: number, rng: Rng): Float32Array {
  if (!(cell > 0)) throw new Error(`valueNoise: cell must be > 0, got ${cell}`);
  const gw = Math.floor(width / cell) + 3;
  const gh = Math.floor(height / cell) + 3;
  const lattice = new Float32Array(gw * gh);
  for (let i = 0; i < lattice.length; i++) lattice[i] = rng.uniform(-1, 1);
  const ox = rng.next();
  const oy = rng.next();
  const out = new Float32Array(height * width);
  const xs0 = new Int32Array(width);
  const txs = new Float32Array(width);
  for (let x = 0; x < width; x++) {
    const fx = x / cell + ox;
    xs0[x] = Math.floor(fx);
    const t = fx - xs0[x];
    txs[x] = t * t * (3 - 2 * t);
  }
  for (let y = 0; y < height; y++) {
    const fy = y / cell + oy;
    const y0 = Math.floor(fy);
    let ty = fy - y0;
    ty = ty * ty * (3 - 2 * ty);
    const r0 = y0 * gw;
    const r1 = r0 + gw;
    for (let x = 0; x < width; x++) {
      const x0 = xs0[x];
      const tx = txs[x];
      const top = lattice[r0 + x0] + (lattice[r0 + x0 + 1] - lattice[r0 + x0]) * tx;
      const bottom = lattice[r1 + x0] + (lattice[r1 + x0 + 1] - lattice[r1 + x0]) * tx;
      out[y * width + x] = top + (bottom - top) * ty;
    }
  }
  return out;
}
