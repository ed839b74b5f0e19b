import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../util/rng.js';
import { gradcheck, GradcheckError } from './gradcheck.js';
import * as F from './functional.js';
import { profile } from './profiler.js';
import {
  Tensor,
  getNumThreads,
  isGradEnabled,
  keep,
  liveTensors,
  manualSeed,
  noGrad,
  setNumThreads,
  tidy,
  type Shape,
} from './tensor.js';

// One libtorch thread per test process: the test runner already runs files in parallel on few cores.
let threadsBefore = 1;
beforeAll(() => {
  threadsBefore = getNumThreads();
  setNumThreads(1);
  manualSeed(0);
});
afterAll(() => setNumThreads(threadsBefore));

// ---------------------------------------------------------------------------------------------------------
// Data helpers. Gradient-check inputs are float64 with values from a seeded JS generator, chosen away from
// the kinks of non-smooth ops (0 for relu/abs, ties for max/maximum, clamp bounds).

let seedCounter = 1;

/** Uniform values in [lo, hi). */
function uniform(n: number, lo = -1, hi = 1): number[] {
  const rng = new Rng(seedCounter++);
  return Array.from({ length: n }, () => lo + (hi - lo) * rng.next());
}

/** Values in ±[0.1, 1): at least 0.1 away from zero. */
function awayFromZero(n: number): number[] {
  const rng = new Rng(seedCounter++);
  return Array.from({ length: n }, () => (rng.next() < 0.5 ? -1 : 1) * (0.1 + 0.9 * rng.next()));
}

/** A shuffled set of distinct values spaced 0.05 apart (no ties for max/argmax-like ops). */
function distinct(n: number): number[] {
  const rng = new Rng(seedCounter++);
  const v = Array.from({ length: n }, (_, i) => (i - n / 2) * 0.05 + 0.013);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [v[i], v[j]] = [v[j], v[i]];
  }
  return v;
}

function numel(shape: Shape): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** float64 tensor requiring grad. */
function g64(shape: Shape, data: number[] = uniform(numel(shape))): Tensor {
  return Tensor.from(Float64Array.from(data), shape, { dtype: 'float64', requiresGrad: true });
}

/** float64 constant (no grad). */
function c64(shape: Shape, data: number[]): Tensor {
  return Tensor.from(Float64Array.from(data), shape, { dtype: 'float64' });
}

function f32(shape: Shape, data: number[]): Tensor {
  return Tensor.from(Float32Array.from(data), shape);
}

/** Elements of a typed array (of any element type, bigint included) as a plain array. */
function list(a: ArrayLike<unknown> | BigInt64Array): unknown[] {
  return Array.from(a as ArrayLike<unknown>);
}

function values(t: Tensor): number[] {
  return Array.from(t.toArray() as ArrayLike<number>, Number);
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ''): void {
  expect(actual.length, `${what} length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
      throw new Error(`${what} index ${i}: ${actual[i]} vs expected ${expected[i]} (tol ${tol})`);
    }
  }
}

/** Runs gradcheck inside a tidy scope and asserts it passed. */
function check(fn: (x: Tensor[]) => Tensor, inputs: Tensor[], opts?: Parameters<typeof gradcheck>[2]): void {
  const err = tidy(() => gradcheck(fn, inputs, opts));
  expect(err).toBeLessThan(1e-5);
  for (const t of inputs) t.dispose();
}

// ---------------------------------------------------------------------------------------------------------

describe('gradcheck helper', () => {
  it('accepts a correct gradient and returns a small max error', () => {
    const x = g64([3], [0.5, -1.2, 2]);
    const err = gradcheck(([a]) => a.mul(a).mul(a), [x]);
    expect(err).toBeGreaterThanOrEqual(0);
    expect(err).toBeLessThan(1e-7);
    expect(x.grad).toBeNull(); // gradcheck clears the inputs' gradients
    x.dispose();
  });

  it('throws a descriptive error on a wrong gradient', () => {
    // detach() hides x from autograd in the second factor: autograd sees d/dx = x.detach(), the true one is 2x.
    const x = g64([2, 2], [0.5, -1, 1.5, 2]);
    const fn = ([a]: Tensor[]): Tensor => a.mul(a.detach());
    expect(() => gradcheck(fn, [x])).toThrow(GradcheckError);
    expect(() => gradcheck(fn, [x])).toThrow(
      /gradcheck failed: 4 of 4 gradient elements.*\n.*input 0 \[2,2\] at \[0,0\]: analytical/,
    );
    x.dispose();
  });

  it('treats an output independent of the input (through autograd) as zero gradient', () => {
    const x = g64([2], [1, 2]);
    expect(gradcheck(([a]) => a.detach().mul(0), [x])).toBe(0);
    // ... and catches a real dependency that autograd cannot see.
    expect(() => gradcheck(([a]) => a.detach().mul(2), [x])).toThrow(/analytical 0, numerical/);
    x.dispose();
  });

  it('rejects float32 inputs, float32 outputs and inputs that do not require grad', () => {
    const x32 = Tensor.from([1, 2], [2], { requiresGrad: true });
    expect(() => gradcheck(([a]) => a.mul(2), [x32])).toThrow(/input 0 is float32; finite differences need float64/);
    const x = g64([2], [1, 2]);
    expect(() => gradcheck(([a]) => a.to('float32'), [x])).toThrow(/returned float32/);
    const c = c64([2], [1, 2]);
    expect(() => gradcheck(([a]) => a.mul(2), [c])).toThrow(/no input requires grad/);
    for (const t of [x32, x, c]) t.dispose();
  });

  it('leaves no tensors behind', () => {
    const x = g64([2, 3]);
    const before = liveTensors();
    gradcheck(([a]) => a.exp().sum(1), [x]);
    expect(liveTensors()).toBe(before);
    x.dispose();
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('gradients: elementwise arithmetic with broadcasting', () => {
  it('add / sub / mul / div with tensors (broadcast) and scalars, alpha', () => {
    check(([a, b]) => a.add(b), [g64([2, 3]), g64([3])]);
    check(([a, b]) => a.add(b, 2.5), [g64([2, 1, 3]), g64([4, 1])]);
    check(([a]) => a.add(1.5, 3), [g64([2, 2])]);
    check(([a, b]) => a.sub(b), [g64([3, 1]), g64([1, 4])]);
    check(([a, b]) => a.sub(b, -0.5), [g64([2, 3]), g64([2, 3])]);
    check(([a]) => a.sub(0.25), [g64([3])]);
    check(([a]) => a.rsub(2), [g64([3])]);
    check(([a, b]) => a.mul(b), [g64([2, 3]), g64([2, 1])]);
    check(([a]) => a.mul(-1.75), [g64([4])]);
    check(([a, b]) => a.div(b), [g64([2, 3]), g64([3], [0.6, -1.3, 2.1])]);
    check(([a]) => a.div(0.3), [g64([4])]);
    check(([a]) => a.neg(), [g64([4])]);
  });

  it('pow (scalar and tensor exponent), sqrt, rsqrt, square, exp, log', () => {
    check(([a]) => a.pow(3), [g64([5], awayFromZero(5))]);
    check(([a]) => a.pow(2.5), [g64([5], uniform(5, 0.2, 2))]);
    check(([a]) => a.pow(-1.5), [g64([5], uniform(5, 0.2, 2))]);
    check(([a, b]) => a.pow(b), [g64([2, 3], uniform(6, 0.3, 2)), g64([3], uniform(3, -1, 2))]);
    check(([a]) => a.sqrt(), [g64([5], uniform(5, 0.2, 3))]);
    check(([a]) => a.rsqrt(), [g64([5], uniform(5, 0.2, 3))]);
    check(([a]) => a.square(), [g64([5])]);
    check(([a]) => a.exp(), [g64([5])]);
    check(([a]) => a.log(), [g64([5], uniform(5, 0.1, 4))]);
  });

  it('abs, sign, clamp, maximum, minimum, where', () => {
    check(([a]) => a.abs(), [g64([6], awayFromZero(6))]);
    check(([a]) => a.sign(), [g64([6], awayFromZero(6))]); // zero gradient almost everywhere
    // Values at least 0.05 from the clamp bounds.
    const cl = [-0.9, -0.41, -0.2, 0.12, 0.35, 0.8];
    check(([a]) => a.clamp(-0.3, 0.4), [g64([6], cl)]);
    check(([a]) => a.clamp(0), [g64([6], cl)]);
    check(([a]) => a.clamp(null, 0.2), [g64([6], cl)]);
    const [p, q] = [distinct(12), distinct(12)];
    // No ties between the two arguments: the two lists are disjoint in value once offset by 0.02.
    check(
      ([a, b]) => a.maximum(b),
      [
        g64([2, 6], p),
        g64(
          [2, 6],
          q.map((v) => v + 0.02),
        ),
      ],
    );
    check(
      ([a, b]) => a.minimum(b),
      [
        g64([2, 6], p),
        g64(
          [6],
          q.slice(0, 6).map((v) => v + 0.02),
        ),
      ],
    );
    const cond = Tensor.from(Uint8Array.of(1, 0, 0, 1, 1, 0), [2, 3], { dtype: 'bool' });
    check(([a, b]) => Tensor.where(cond, a, b), [g64([2, 3]), g64([3])]);
    cond.dispose();
  });

  it('activations: relu, leakyRelu, sigmoid, tanh (methods and F.*)', () => {
    const x = (): Tensor => g64([2, 5], awayFromZero(10));
    check(([a]) => a.relu(), [x()]);
    check(([a]) => F.relu(a), [x()]);
    check(([a]) => a.leakyRelu(0.2), [x()]);
    check(([a]) => F.leakyRelu(a), [x()]);
    check(([a]) => a.sigmoid(), [x()]);
    check(([a]) => F.sigmoid(a), [x()]);
    check(([a]) => a.tanh(), [x()]);
    check(([a]) => F.tanh(a), [x()]);
  });

  it('softmax and logSoftmax over each dim', () => {
    for (const dim of [0, 1, -1]) {
      check(([a]) => F.softmax(a, dim), [g64([3, 4], uniform(12, -2, 2))]);
      check(([a]) => F.logSoftmax(a, dim), [g64([3, 4], uniform(12, -2, 2))]);
    }
    check(([a]) => F.softmax(a, 1), [g64([2, 3, 2, 2], uniform(24, -2, 2))]);
  });

  it('dropout: identity when not training or p = 0; scaled mask in training', () => {
    check(([a]) => F.dropout(a, 0.5, false), [g64([6])]);
    check(([a]) => F.dropout(a, 0, true), [g64([6])]);
    manualSeed(3);
    const x = g64([200], uniform(200, 0.5, 1));
    const y = F.dropout(x, 0.25, true);
    y.sum().backward();
    const yv = values(y);
    const xv = values(x);
    const gv = values(x.grad!);
    const zeros = yv.filter((v) => v === 0).length;
    expect(zeros).toBeGreaterThan(20);
    expect(zeros).toBeLessThan(80);
    yv.forEach((v, i) => {
      const kept = v !== 0;
      expect(v).toBeCloseTo(kept ? xv[i] / 0.75 : 0, 12);
      expect(gv[i]).toBeCloseTo(kept ? 1 / 0.75 : 0, 12);
    });
  });

  it('clone, contiguous, to(float64) pass gradients; detach blocks them', () => {
    check(([a]) => a.clone().mul(2), [g64([3])]);
    check(([a]) => a.transpose(0, 1).contiguous(), [g64([2, 3])]);
    check(([a]) => a.to('float64').exp(), [g64([3])]);
    const x = g64([3]);
    const y = x.detach();
    expect(y.requiresGrad).toBe(false);
    expect(values(y)).toEqual(values(x));
    x.dispose();
  });
});

describe('gradients: reductions and matmul', () => {
  it('sum, mean, var, amax, amin (all elements, dims, keepDim)', () => {
    check(([a]) => a.sum(), [g64([2, 3, 2])]);
    check(([a]) => a.sum(1), [g64([2, 3, 2])]);
    check(([a]) => a.sum([0, 2], true), [g64([2, 3, 2])]);
    check(([a]) => a.mean(), [g64([2, 3, 2])]);
    check(([a]) => a.mean(-1), [g64([2, 3, 2])]);
    check(([a]) => a.mean([0, 2], true), [g64([2, 3, 2])]);
    check(([a]) => a.var(1), [g64([2, 3, 2])]);
    check(([a]) => a.var([0, 2], false, true), [g64([2, 3, 2])]);
    check(([a]) => a.amax(), [g64([2, 3, 2], distinct(12))]);
    check(([a]) => a.amax(1), [g64([2, 3, 2], distinct(12))]);
    check(([a]) => a.amax([0, 2], true), [g64([2, 3, 2], distinct(12))]);
    check(([a]) => a.amin(2), [g64([2, 3, 2], distinct(12))]);
  });

  it('matmul: matrix-matrix, batched with broadcasting, matrix-vector, vector-matrix', () => {
    check(([a, b]) => a.matmul(b), [g64([2, 3]), g64([3, 4])]);
    check(([a, b]) => a.matmul(b), [g64([2, 2, 3]), g64([3, 2])]);
    check(([a, b]) => a.matmul(b), [g64([1, 2, 3]), g64([2, 3, 2])]);
    check(([a, b]) => a.matmul(b), [g64([2, 3]), g64([3])]);
    check(([a, b]) => a.matmul(b), [g64([3]), g64([3, 2])]);
  });
});

describe('gradients: shape ops', () => {
  it('reshape, view, permute, transpose, flatten, squeeze, unsqueeze, expand, repeat', () => {
    check(([a]) => a.reshape([3, 2]), [g64([2, 3])]);
    check(([a]) => a.view([6, 1]), [g64([2, 3])]);
    check(([a]) => a.permute([2, 0, 1]), [g64([2, 3, 2])]);
    check(([a]) => a.transpose(0, 2), [g64([2, 3, 2])]);
    check(([a]) => a.flatten(), [g64([2, 3, 2])]);
    check(([a]) => a.flatten(1), [g64([2, 3, 2])]);
    check(([a]) => a.flatten(0, 1), [g64([2, 3, 2])]);
    check(([a]) => a.squeeze(), [g64([1, 3, 1])]);
    check(([a]) => a.squeeze(0), [g64([1, 3, 1])]);
    check(([a]) => a.unsqueeze(1), [g64([2, 3])]);
    check(([a]) => a.expand([2, 3, 4]), [g64([3, 1])]);
    check(([a]) => a.repeat([2, 1, 3]), [g64([2, 2])]);
  });

  it('slice (steps, negative bounds), cat, stack, indexSelect, gather', () => {
    check(([a]) => a.slice(1, 1, 4), [g64([2, 5])]);
    check(([a]) => a.slice(1, 0, 5, 2), [g64([2, 5])]);
    check(([a]) => a.slice(-1, -3), [g64([2, 5])]);
    check(([a, b]) => Tensor.cat([a, b], 0), [g64([2, 3]), g64([1, 3])]);
    check(([a, b]) => Tensor.cat([a, b, a], 1), [g64([2, 3]), g64([2, 1])]);
    check(([a, b]) => Tensor.stack([a, b], 1), [g64([2, 3]), g64([2, 3])]);
    const idx = Tensor.from(BigInt64Array.of(2n, 0n, 2n), [3]);
    check(([a]) => a.indexSelect(1, idx), [g64([2, 4])]); // index 2 twice: gradients accumulate
    const gi = Tensor.from(BigInt64Array.of(0n, 0n, 1n, 2n, 2n, 2n), [2, 3]);
    check(([a]) => a.gather(1, gi), [g64([2, 4])]);
    idx.dispose();
    gi.dispose();
  });

  it('pad: constant (with value and negative crop), reflect, replicate', () => {
    check(([a]) => a.pad([1, 2]), [g64([2, 3])]);
    check(([a]) => a.pad([1, 0, 2, 1], 'constant', 0.5), [g64([1, 1, 3, 3])]);
    check(([a]) => a.pad([-1, 1, 0, -1]), [g64([1, 1, 3, 3])]);
    check(([a]) => a.pad([2, 1, 1, 2], 'reflect'), [g64([1, 2, 3, 4])]);
    check(([a]) => a.pad([2, 1, 1, 2], 'replicate'), [g64([1, 2, 3, 4])]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Naive references for convolutions, written from the definitions (PyTorch's cross-correlation convention).

interface Arr4 {
  data: number[];
  shape: [number, number, number, number];
}

function naiveConv2d(
  x: Arr4,
  w: Arr4,
  b: number[] | null,
  stride: [number, number],
  pad: [number, number],
  dil: [number, number],
  groups: number,
): Arr4 {
  const [n, cin, h, wd] = x.shape;
  const [cout, cg, kh, kw] = w.shape;
  const oh = Math.floor((h + 2 * pad[0] - dil[0] * (kh - 1) - 1) / stride[0]) + 1;
  const ow = Math.floor((wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) / stride[1]) + 1;
  const out = new Array<number>(n * cout * oh * ow).fill(0);
  const outPerGroup = cout / groups;
  expect(cg * groups).toBe(cin);
  for (let s = 0; s < n; s++)
    for (let o = 0; o < cout; o++) {
      const g = Math.floor(o / outPerGroup);
      for (let i = 0; i < oh; i++)
        for (let j = 0; j < ow; j++) {
          let acc = b ? b[o] : 0;
          for (let c = 0; c < cg; c++)
            for (let u = 0; u < kh; u++)
              for (let v = 0; v < kw; v++) {
                const r = i * stride[0] - pad[0] + u * dil[0];
                const q = j * stride[1] - pad[1] + v * dil[1];
                if (r < 0 || r >= h || q < 0 || q >= wd) continue;
                acc += x.data[((s * cin + g * cg + c) * h + r) * wd + q] * w.data[((o * cg + c) * kh + u) * kw + v];
              }
          out[((s * cout + o) * oh + i) * ow + j] = acc;
        }
    }
  return { data: out, shape: [n, cout, oh, ow] };
}

/** Transposed convolution as a scatter: input pixel (r, q) adds x * w[u, v] to output (r*s - p + u, q*s - p + v). */
function naiveConvTranspose2d(
  x: Arr4,
  w: Arr4,
  b: number[] | null,
  stride: [number, number],
  pad: [number, number],
  outPad: [number, number],
): Arr4 {
  const [n, cin, h, wd] = x.shape;
  const [, cout, kh, kw] = w.shape;
  const oh = (h - 1) * stride[0] - 2 * pad[0] + kh + outPad[0];
  const ow = (wd - 1) * stride[1] - 2 * pad[1] + kw + outPad[1];
  const out = new Array<number>(n * cout * oh * ow).fill(0);
  for (let s = 0; s < n; s++)
    for (let o = 0; o < cout; o++) {
      for (let i = 0; i < oh * ow; i++) out[(s * cout + o) * oh * ow + i] = b ? b[o] : 0;
      for (let c = 0; c < cin; c++)
        for (let r = 0; r < h; r++)
          for (let q = 0; q < wd; q++)
            for (let u = 0; u < kh; u++)
              for (let v = 0; v < kw; v++) {
                const i = r * stride[0] - pad[0] + u;
                const j = q * stride[1] - pad[1] + v;
                if (i < 0 || i >= oh || j < 0 || j >= ow) continue;
                out[((s * cout + o) * oh + i) * ow + j] +=
                  x.data[((s * cin + c) * h + r) * wd + q] * w.data[((c * cout + o) * kh + u) * kw + v];
              }
    }
  return { data: out, shape: [n, cout, oh, ow] };
}

function arr4(shape: [number, number, number, number], lo = -1, hi = 1): Arr4 {
  return { data: uniform(numel(shape), lo, hi), shape };
}

const t64 = (a: Arr4, grad = true): Tensor =>
  Tensor.from(Float64Array.from(a.data), a.shape, { dtype: 'float64', requiresGrad: grad });

describe('conv2d', () => {
  it('3x3 cross-correlation on a 4x4 input, by hand', () => {
    // x[r][c] = 4r + c; kernel taps w[0][1] = 1 and w[2][2] = 2 (asymmetric: a flipped kernel gives other values).
    // out[i][j] = x[i][j+1] + 2 x[i+2][j+2] + 0.5 = (4i + j + 1) + 2(4i + 8 + j + 2) + 0.5 = 12i + 3j + 21.5
    const x = f32(
      [1, 1, 4, 4],
      Array.from({ length: 16 }, (_, k) => k),
    );
    const w = f32([1, 1, 3, 3], [0, 1, 0, 0, 0, 0, 0, 0, 2]);
    const b = f32([1], [0.5]);
    const y = F.conv2d(x, w, b);
    expect(y.shape).toEqual([1, 1, 2, 2]);
    expectClose(y.toFloat32Array(), [21.5, 24.5, 33.5, 36.5], 1e-5);
    // padding 1, stride 2: outputs at centres (0,0), (0,2), (2,0), (2,2) of the padded grid.
    // out(i, j) = x[i-1][j] + 2 x[i+1][j+1] + 0.5 (zero outside): (0,0): 0 + 2*5 = 10.5; (0,2): 0 + 2*7 = 14.5;
    // (2,0): x[1][0] + 2 x[3][1] = 4 + 26 = 30.5; (2,2): x[1][2] + 2 x[3][3] = 6 + 30 = 36.5
    const y2 = F.conv2d(x, w, b, { stride: 2, padding: 1 });
    expectClose(y2.toFloat32Array(), [10.5, 14.5, 30.5, 36.5], 1e-5);
  });

  const cases: {
    name: string;
    x: [number, number, number, number];
    w: [number, number, number, number];
    o: { stride: [number, number]; padding: [number, number]; dilation: [number, number]; groups: number };
  }[] = [
    {
      name: 'plain',
      x: [2, 2, 5, 5],
      w: [3, 2, 3, 3],
      o: { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 },
    },
    {
      name: 'stride 2',
      x: [1, 2, 6, 5],
      w: [2, 2, 3, 3],
      o: { stride: [2, 2], padding: [0, 0], dilation: [1, 1], groups: 1 },
    },
    {
      name: 'padding 1',
      x: [1, 2, 4, 4],
      w: [2, 2, 3, 3],
      o: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 },
    },
    {
      name: 'dilation 2',
      x: [1, 1, 6, 6],
      w: [2, 1, 3, 3],
      o: { stride: [1, 1], padding: [1, 1], dilation: [2, 2], groups: 1 },
    },
    {
      name: 'groups 2',
      x: [1, 4, 4, 4],
      w: [6, 2, 3, 3],
      o: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 2 },
    },
    {
      name: 'depthwise',
      x: [1, 3, 4, 4],
      w: [3, 1, 2, 2],
      o: { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 3 },
    },
    {
      name: 'rectangular kernel, per-axis stride/padding/dilation',
      x: [1, 2, 6, 5],
      w: [2, 2, 2, 3],
      o: { stride: [2, 1], padding: [1, 0], dilation: [1, 2], groups: 1 },
    },
  ];

  for (const c of cases) {
    it(`${c.name}: forward matches the naive reference, gradients match finite differences`, () => {
      const x = arr4(c.x);
      const w = arr4(c.w);
      const b = uniform(c.w[0]);
      const ref = naiveConv2d(x, w, b, c.o.stride, c.o.padding, c.o.dilation, c.o.groups);
      tidy(() => {
        const y = F.conv2d(t64(x, false), t64(w, false), c64([b.length], b), c.o);
        expect(y.shape).toEqual(ref.shape);
        expectClose(values(y), ref.data, 1e-12, c.name);
      });
      check(([xi, wi, bi]) => F.conv2d(xi, wi, bi, c.o), [t64(x), t64(w), g64([b.length], b)]);
    });
  }

  it('no bias', () => {
    check(([xi, wi]) => F.conv2d(xi, wi, null, { padding: 1 }), [g64([1, 2, 3, 3]), g64([2, 2, 3, 3])]);
  });
});

describe('convTranspose2d', () => {
  it('hand-computed: stride 1 and stride 2 = kernel, both algorithms', () => {
    // x = [[1, 2]], w = [[1, 2], [3, 4]]. Each input pixel stamps x * w at (s*r + u, s*q + v).
    const x = f32([1, 1, 1, 2], [1, 2]);
    const w = f32([1, 1, 2, 2], [1, 2, 3, 4]);
    // stride 1: [[1, 2+2, 4], [3, 4+6, 8]]
    for (const algorithm of ['auto', 'direct'] as const) {
      const y1 = F.convTranspose2d(x, w, null, { algorithm });
      expect(y1.shape).toEqual([1, 1, 2, 3]);
      expectClose(y1.toFloat32Array(), [1, 4, 4, 3, 10, 8], 1e-6);
    }
    // stride 2: the two stamps do not overlap: [[1, 2, 2, 4], [3, 4, 6, 8]]; bias adds 1.
    const y2 = F.convTranspose2d(x, w, f32([1], [1]), { stride: 2 });
    expect(y2.shape).toEqual([1, 1, 2, 4]);
    expectClose(y2.toFloat32Array(), [2, 3, 3, 5, 4, 5, 7, 9], 1e-6);
    const y3 = F.convTranspose2d(x, w, f32([1], [1]), { stride: 2, algorithm: 'direct' });
    expectClose(y3.toFloat32Array(), [2, 3, 3, 5, 4, 5, 7, 9], 1e-6);
  });

  // [kernel, stride, padding, outputPadding] per axis, and whether the sub-pixel plan applies.
  const cases: {
    k: [number, number];
    s: [number, number];
    p: [number, number];
    op: [number, number];
    h: [number, number];
    subpixel: boolean;
  }[] = [
    { k: [4, 4], s: [2, 2], p: [1, 1], op: [0, 0], h: [3, 4], subpixel: true }, // AnoSeg's decoder
    { k: [2, 2], s: [2, 2], p: [0, 0], op: [0, 0], h: [3, 3], subpixel: true },
    { k: [4, 4], s: [2, 2], p: [0, 0], op: [0, 0], h: [3, 3], subpixel: true },
    { k: [4, 4], s: [2, 2], p: [2, 2], op: [0, 0], h: [4, 3], subpixel: true },
    { k: [4, 4], s: [2, 2], p: [3, 3], op: [0, 0], h: [4, 4], subpixel: true }, // phases need negative padding
    { k: [3, 3], s: [1, 1], p: [1, 1], op: [0, 0], h: [3, 3], subpixel: true },
    { k: [6, 6], s: [3, 3], p: [3, 3], op: [0, 0], h: [2, 3], subpixel: true },
    { k: [6, 6], s: [3, 3], p: [2, 2], op: [0, 0], h: [2, 3], subpixel: false }, // output size 3H - 1
    { k: [6, 3], s: [3, 3], p: [1, 1], op: [2, 2], h: [2, 2], subpixel: true }, // output padding keeps size % s == 0
    { k: [4, 3], s: [2, 1], p: [1, 1], op: [0, 0], h: [3, 3], subpixel: true },
    { k: [3, 3], s: [2, 2], p: [1, 1], op: [1, 1], h: [3, 3], subpixel: false }, // kernel % stride != 0
    { k: [4, 4], s: [2, 2], p: [1, 1], op: [1, 1], h: [3, 3], subpixel: false }, // odd output size
  ];
  const label = (c: (typeof cases)[number]): string => `k=${c.k} s=${c.s} p=${c.p} op=${c.op} on ${c.h}`;

  for (const c of cases) {
    it(`${label(c)}: both algorithms match the naive reference and finite differences`, () => {
      const [cin, cout] = [2, 2];
      const x = arr4([1, cin, c.h[0], c.h[1]]);
      const w = arr4([cin, cout, c.k[0], c.k[1]]);
      const b = uniform(cout);
      const ref = naiveConvTranspose2d(x, w, b, c.s, c.p, c.op);
      const usedOps = tidy(() =>
        profile(() =>
          F.convTranspose2d(t64(x, false), t64(w, false), null, { stride: c.s, padding: c.p, outputPadding: c.op }),
        ),
      ).map((r) => r.name);
      // 'auto' takes the sub-pixel plan (regular convolutions only) exactly when it applies.
      expect(usedOps.includes('aten::conv_transpose2d')).toBe(!c.subpixel);
      expect(usedOps.includes('aten::conv2d')).toBe(c.subpixel);
      for (const algorithm of ['auto', 'direct'] as const) {
        const o = { stride: c.s, padding: c.p, outputPadding: c.op, algorithm };
        tidy(() => {
          const y = F.convTranspose2d(t64(x, false), t64(w, false), c64([cout], b), o);
          expect(y.shape).toEqual(ref.shape);
          expectClose(values(y), ref.data, 1e-12, `${label(c)} ${algorithm}`);
        });
        check(([xi, wi, bi]) => F.convTranspose2d(xi, wi, bi, o), [t64(x), t64(w), g64([cout], b)]);
      }
    });
  }

  it('profile(byShape) tells the same operator apart by its input shapes', () => {
    const rows = tidy(() => {
      const a = Tensor.ones([2, 3]);
      const b = Tensor.ones([4, 5]);
      return profile(
        () => {
          a.relu();
          a.relu();
          b.relu();
        },
        { byShape: true },
      );
    });
    const relu = rows.filter((r) => r.name.startsWith('aten::relu '));
    expect(relu.map((r) => [r.name, r.count]).sort()).toEqual([
      ['aten::relu [2,3]', 2],
      ['aten::relu [4,5]', 1],
    ]);
  });

  it("'auto' runs the sub-pixel plan (regular convolutions) when it applies, libtorch's kernel otherwise", () => {
    const opsOf = (k: number, s: number, p: number, op: number): string[] =>
      tidy(() => {
        const x = Tensor.randn([1, 2, 4, 4]);
        const w = Tensor.randn([2, 3, k, k]);
        return profile(() => F.convTranspose2d(x, w, null, { stride: s, padding: p, outputPadding: op })).map(
          (r) => r.name,
        );
      });
    const sub = opsOf(4, 2, 1, 0);
    expect(sub).toContain('aten::conv2d');
    expect(sub).not.toContain('aten::slow_conv_transpose2d');
    const direct = opsOf(3, 2, 1, 1);
    expect(direct).toContain('aten::conv_transpose2d');
    expect(direct).not.toContain('aten::conv2d');
  });

  for (const [k, s, p] of [
    [4, 2, 1],
    [2, 2, 0],
    [6, 3, 3],
    [4, 2, 3],
    [3, 1, 1],
  ]) {
    it(`float32 sub-pixel equals direct for k=${k} s=${s} p=${p}: output and input/weight/bias gradients`, () => {
      manualSeed(10 + k + s + p);
      const x0 = Tensor.randn([2, 3, 5, 6]);
      const w0 = Tensor.randn([3, 4, k, k]);
      const b0 = Tensor.randn([4]);
      const g0 = Tensor.randn(F.convTranspose2d(x0, w0, b0, { stride: s, padding: p, algorithm: 'direct' }).shape);
      const run = (algorithm: 'subpixel' | 'direct'): number[][] =>
        tidy(() => {
          const [x, w, b] = [x0, w0, b0].map((t) => {
            const c = t.clone();
            c.requiresGrad = true;
            return c;
          });
          const y = F.convTranspose2d(x, w, b, { stride: s, padding: p, algorithm });
          y.backward(g0);
          return [values(y), values(x.grad!), values(w.grad!), values(b.grad!)];
        });
      const a = run('subpixel');
      const d = run('direct');
      ['output', 'input grad', 'weight grad', 'bias grad'].forEach((what, i) => {
        const scale = Math.max(...d[i].map(Math.abs));
        expectClose(a[i], d[i], 2e-6 * Math.max(1, scale), what);
      });
    });
  }

  it('rejects a forced sub-pixel plan that does not apply, and channel mismatches', () => {
    const x = Tensor.zeros([1, 2, 3, 3]);
    expect(() => F.convTranspose2d(x, Tensor.zeros([2, 2, 3, 3]), null, { stride: 2, algorithm: 'subpixel' })).toThrow(
      /sub-pixel path needs kernel % stride == 0/,
    );
    expect(() => F.convTranspose2d(x, Tensor.zeros([3, 2, 4, 4]), null, { stride: 2 })).toThrow(
      /input has 2 channels, weight expects 3/,
    );
  });
});

describe('batch norm, pooling, interpolation', () => {
  it('batchNorm in training mode (batch statistics, biased variance) by hand and by finite differences', () => {
    // One channel, values 1..4: mean 2.5, biased var 1.25 -> (x - 2.5) / sqrt(1.25 + eps) * 2 + 1
    const x = f32([4, 1, 1, 1], [1, 2, 3, 4]);
    const y = F.batchNorm(x, null, null, f32([1], [2]), f32([1], [1]), { training: true, eps: 0 });
    const s = Math.sqrt(1.25);
    expectClose(
      y.toFloat32Array(),
      [1, 2, 3, 4].map((v) => ((v - 2.5) / s) * 2 + 1),
      1e-5,
    );
    check(
      ([xi, w, b]) => F.batchNorm(xi, null, null, w, b, { training: true }),
      [g64([3, 2, 2, 2]), g64([2], [1.2, 0.7]), g64([2], [0.1, -0.3])],
    );
    // With running statistics (updated in place on each call, not part of the output) and no affine.
    const rm = c64([2], [0, 0]);
    const rv = c64([2], [1, 1]);
    check(([xi]) => F.batchNorm(xi, rm, rv, null, null, { training: true, momentum: 0.3 }), [g64([2, 2, 3, 1])]);
  });

  it('batchNorm in eval mode uses the running statistics', () => {
    const rm = c64([2], [0.5, -1]);
    const rv = c64([2], [4, 0.25]);
    const x = c64([1, 2, 1, 2], [1, 2, 3, 4]);
    const y = F.batchNorm(x, rm, rv, c64([2], [1, 3]), c64([2], [0, 1]), { training: false, eps: 0 });
    // channel 0: (x - 0.5) / 2; channel 1: (x + 1) / 0.5 * 3 + 1
    expectClose(values(y), [0.25, 0.75, 25, 31], 1e-12);
    check(([xi, w, b]) => F.batchNorm(xi, rm, rv, w, b, { training: false }), [g64([2, 2, 2, 2]), g64([2]), g64([2])]);
  });

  it('maxPool2d, avgPool2d, adaptiveAvgPool2d: values and gradients', () => {
    const x = f32(
      [1, 1, 4, 4],
      Array.from({ length: 16 }, (_, k) => ((k * 7) % 16) - 5),
    );
    // k*7 mod 16 - 5, rows: [-5 2 9 0], [7 -2 5 -4], [3 10 1 8], [-1 6 -3 4]
    expectClose(F.maxPool2d(x, 2).toFloat32Array(), [7, 9, 10, 8], 0);
    expectClose(F.avgPool2d(x, 2).toFloat32Array(), [0.5, 2.5, 4.5, 2.5], 1e-6);
    // kernel 3, stride 2, padding 1: windows rows/cols {0,1} and {1,2,3}; avg counts the zero padding
    // (count_include_pad = True, divisor 9): window sums 2, 10, 23, 25.
    expectClose(F.maxPool2d(x, 3, 2, 1).toFloat32Array(), [7, 9, 10, 10], 0);
    expectClose(F.avgPool2d(x, 3, 2, 1).toFloat32Array(), [2 / 9, 10 / 9, 23 / 9, 25 / 9], 1e-6);
    // adaptive 5x5 -> 2x3 on x = 5r + c: row windows [0,3) [2,5), column windows [0,2) [1,4) [3,5)
    // (start = floor(i*in/out), end = ceil((i+1)*in/out)); the mean is 5*mean(rows) + mean(cols).
    // Cross-checked with torch 1.13: F.adaptive_avg_pool2d(torch.arange(25.).reshape(1,1,5,5), (2,3)).
    const x5 = f32(
      [1, 1, 5, 5],
      Array.from({ length: 25 }, (_, k) => k),
    );
    expectClose(F.adaptiveAvgPool2d(x5, [2, 3]).toFloat32Array(), [5.5, 7, 8.5, 15.5, 17, 18.5], 1e-5);

    check(([a]) => F.maxPool2d(a, 2), [g64([1, 2, 4, 4], distinct(32))]);
    check(([a]) => F.maxPool2d(a, 3, 2, 1), [g64([1, 2, 5, 5], distinct(50))]);
    check(([a]) => F.maxPool2d(a, [2, 3], [1, 2]), [g64([1, 1, 4, 5], distinct(20))]);
    check(([a]) => F.avgPool2d(a, 2), [g64([1, 2, 4, 4])]);
    check(([a]) => F.avgPool2d(a, 3, 2, 1), [g64([1, 2, 5, 5])]);
    check(([a]) => F.adaptiveAvgPool2d(a, [2, 3]), [g64([1, 2, 5, 5])]);
    check(([a]) => F.adaptiveAvgPool2d(a, 1), [g64([2, 2, 3, 3])]);
  });

  it('interpolate: bilinear (align_corners false) and nearest, values and gradients', () => {
    // 2x2 -> 4x4 bilinear on x = 2r + c: source coordinate (d + 0.5)/2 - 0.5 clamped to [0, 1] gives
    // per-axis weights [0, .25, .75, 1], so y = 2 R + C with R, C in {0, .25, .75, 1}.
    const x = f32([1, 1, 2, 2], [0, 1, 2, 3]);
    const axis = [0, 0.25, 0.75, 1];
    const expected = axis.flatMap((r) => axis.map((c) => 2 * r + c));
    expectClose(F.interpolate(x, 4).toFloat32Array(), expected, 1e-6);
    // 4x4 -> 3x3 downsampling on x = 4r + c: source coordinates (d + 0.5) * 4/3 - 0.5 = 1/6, 3/2, 17/6.
    const src = [1 / 6, 3 / 2, 17 / 6];
    const x4 = f32(
      [1, 1, 4, 4],
      Array.from({ length: 16 }, (_, k) => k),
    );
    expectClose(
      F.interpolate(x4, 3).toFloat32Array(),
      src.flatMap((r) => src.map((c) => 4 * r + c)),
      1e-5,
    );
    // nearest 3x3 -> 5x4: source index floor(d * in / out): rows [0,0,1,1,2], cols [0,0,1,2].
    const x3 = f32(
      [1, 1, 3, 3],
      Array.from({ length: 9 }, (_, k) => k),
    );
    const near = [0, 0, 1, 1, 2].flatMap((r) => [0, 0, 1, 2].map((c) => 3 * r + c));
    expectClose(F.interpolate(x3, [5, 4], 'nearest').toFloat32Array(), near, 0);

    check(([a]) => F.interpolate(a, [5, 4]), [g64([1, 2, 3, 3])]);
    check(([a]) => F.interpolate(a, 3), [g64([1, 1, 5, 4])]);
    check(([a]) => F.interpolate(a, [6, 5], 'nearest'), [g64([1, 2, 3, 3])]);
    check(([a]) => F.interpolate(a, 2, 'nearest'), [g64([1, 1, 4, 3])]);
  });
});

describe('losses', () => {
  it('values by hand: l1, mse, bce (with the -100 log clamp), bceWithLogits, crossEntropy', () => {
    const a = c64([2, 2], [1, -2, 0.5, 3]);
    const b = c64([2, 2], [0, 1, 0.5, 1]);
    // |d| = [1, 3, 0, 2]; d^2 = [1, 9, 0, 4]
    expect(F.l1Loss(a, b).item()).toBeCloseTo(1.5, 12);
    expect(F.l1Loss(a, b, 'sum').item()).toBeCloseTo(6, 12);
    expect(values(F.l1Loss(a, b, 'none'))).toEqual([1, 3, 0, 2]);
    expect(F.mseLoss(a, b).item()).toBeCloseTo(3.5, 12);
    expect(F.mseLoss(a, b, 'sum').item()).toBeCloseTo(14, 12);

    const p = c64([3], [0.8, 0.3, 0]);
    const t = c64([3], [1, 0, 1]);
    // -[ln 0.8, ln 0.7, max(ln 0, -100)]
    expectClose(values(F.bceLoss(p, t, 'none')), [-Math.log(0.8), -Math.log(0.7), 100], 1e-12);
    expect(F.bceLoss(p.slice(0, 0, 2), t.slice(0, 0, 2)).item()).toBeCloseTo(-(Math.log(0.8) + Math.log(0.7)) / 2, 12);

    // bce with logits z, target y: max(z, 0) - z y + log(1 + exp(-|z|)); stable at z = ±50.
    const z = c64([4], [2, -1, 50, -50]);
    const y = c64([4], [1, 0.25, 0, 0]);
    const ref = [2, -1, 50, -50].map((zi, i) => {
      const yi = [1, 0.25, 0, 0][i];
      return Math.max(zi, 0) - zi * yi + Math.log1p(Math.exp(-Math.abs(zi)));
    });
    expectClose(values(F.bceWithLogits(z, y, 'none')), ref, 1e-12);
    expect(F.bceWithLogits(z, y).item()).toBeCloseTo(ref.reduce((s, v) => s + v) / 4, 12);

    // softmax([1, 2, 3]) = e^k / (e + e^2 + e^3); cross-entropy = -log softmax at the target.
    const row = c64([1, 3], [1, 2, 3]);
    const den = Math.E + Math.E ** 2 + Math.E ** 3;
    const sm = [Math.E / den, Math.E ** 2 / den, Math.E ** 3 / den];
    expectClose(values(F.softmax(row, 1)), sm, 1e-12);
    expectClose(sm, [0.09003057317038046, 0.24472847105479767, 0.6652409557748219], 1e-15); // from torch.softmax
    expectClose(values(F.logSoftmax(row, 1)), sm.map(Math.log), 1e-12);
    const logits = c64([2, 3], [1, 2, 3, 0, 0, 0]);
    const cls = Tensor.from(BigInt64Array.of(2n, 1n), [2]);
    expectClose(values(F.crossEntropy(logits, cls, 'none')), [-Math.log(sm[2]), Math.log(3)], 1e-12);
    expect(F.crossEntropy(logits, cls).item()).toBeCloseTo((-Math.log(sm[2]) + Math.log(3)) / 2, 12);
  });

  it('gradients of every loss and reduction (input and, where differentiable, target)', () => {
    for (const r of ['mean', 'sum', 'none'] as const) {
      // l1: |input - target| at least 0.1 apart.
      const t1 = uniform(6);
      const i1 = t1.map((v, k) => v + (k % 2 ? 0.3 : -0.25));
      check(([a, b]) => F.l1Loss(a, b, r), [g64([2, 3], i1), g64([2, 3], t1)]);
      check(([a, b]) => F.mseLoss(a, b, r), [g64([2, 3]), g64([2, 3])]);
      check(([a, b]) => F.bceLoss(a, b, r), [g64([2, 3], uniform(6, 0.1, 0.9)), g64([2, 3], uniform(6, 0, 1))]);
      check(([a, b]) => F.bceWithLogits(a, b, r), [g64([2, 3], uniform(6, -3, 3)), g64([2, 3], uniform(6, 0, 1))]);
      const cls = Tensor.from(BigInt64Array.of(0n, 2n, 1n), [3]);
      check(([a]) => F.crossEntropy(a, cls, r), [g64([3, 4], uniform(12, -2, 2))]);
      cls.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('forward values by hand', () => {
  it('broadcasting add/mul, matmul, reductions, shape ops', () => {
    const col = f32([2, 1], [10, 20]);
    const row = f32([3], [1, 2, 3]);
    const s = col.add(row);
    expect(s.shape).toEqual([2, 3]);
    expect(Array.from(s.toFloat32Array())).toEqual([11, 12, 13, 21, 22, 23]);
    expect(Array.from(col.mul(row).toFloat32Array())).toEqual([10, 20, 30, 20, 40, 60]);
    expect(Array.from(col.sub(row, 2).toFloat32Array())).toEqual([8, 6, 4, 18, 16, 14]);
    expect(Array.from(row.rsub(1).toFloat32Array())).toEqual([0, -1, -2]);
    // [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]
    const m = f32([2, 2], [1, 2, 3, 4]).matmul(f32([2, 2], [5, 6, 7, 8]));
    expect(Array.from(m.toFloat32Array())).toEqual([19, 22, 43, 50]);
    const v = c64([4], [1, 2, 3, 4]);
    expect(v.var(0).item()).toBeCloseTo(5 / 3, 12); // unbiased, like torch.var
    expect(v.var(0, false).item()).toBeCloseTo(1.25, 12);
    expect(v.mean().item()).toBe(2.5);
    const x = f32([2, 3], [3, -1, 4, 1, 5, -9]);
    expect(Array.from(x.amax(1).toFloat32Array())).toEqual([4, 5]);
    expect(Array.from(x.amin(0).toFloat32Array())).toEqual([1, -1, -9]);
    expect(list(x.argmax(1).toArray())).toEqual([2n, 1n]);
    expect(Array.from(x.sum(0).toFloat32Array())).toEqual([4, 4, -5]);
    expect(x.sum(1, true).shape).toEqual([2, 1]);
    expect(Array.from(x.transpose(0, 1).toFloat32Array())).toEqual([3, 1, -1, 5, 4, -9]);
    expect(Array.from(x.slice(1, 0, 3, 2).toFloat32Array())).toEqual([3, 4, 1, -9]);
    expect(Array.from(x.clamp(0, 3).toFloat32Array())).toEqual([3, 0, 3, 1, 3, 0]);
    const idx = Tensor.from(BigInt64Array.of(2n, 0n), [2]);
    expect(Array.from(x.indexSelect(1, idx).toFloat32Array())).toEqual([4, 3, -9, 1]);
    expect(Array.from(x.gather(1, Tensor.from(BigInt64Array.of(1n, 1n, 0n, 2n), [2, 2])).toFloat32Array())).toEqual([
      -1, -1, 1, -9,
    ]);
    const p = f32([1, 1, 2, 3], [1, 2, 3, 4, 5, 6]);
    // reflect pad (left 2, right 1): row [1 2 3] -> [3 2 1 2 3 2]; replicate -> [1 1 1 2 3 3]
    expect(Array.from(p.pad([2, 1, 0, 0], 'reflect').toFloat32Array())).toEqual([3, 2, 1, 2, 3, 2, 6, 5, 4, 5, 6, 5]);
    expect(Array.from(p.pad([2, 1, 0, 0], 'replicate').toFloat32Array())).toEqual([1, 1, 1, 2, 3, 3, 4, 4, 4, 5, 6, 6]);
    expect(Array.from(p.pad([0, 0, 1, 0], 'constant', 7).toFloat32Array())).toEqual([7, 7, 7, 1, 2, 3, 4, 5, 6]);
    expect(Array.from(f32([2], [1, 2]).repeat([2]).toFloat32Array())).toEqual([1, 2, 1, 2]);
    expect(Array.from(Tensor.cat([f32([1], [1]), f32([2], [2, 3])]).toFloat32Array())).toEqual([1, 2, 3]);
    expect(Tensor.stack([f32([2], [1, 2]), f32([2], [3, 4])], 1).shape).toEqual([2, 2]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('memory scopes and grad mode', () => {
  it('tidy disposes intermediates and keeps returned tensors (single, array, object, nested)', () => {
    const outside = Tensor.ones([2]);
    const before = liveTensors();
    let intermediate: Tensor | null = null;
    const r = tidy(() => {
      intermediate = outside.add(1);
      return intermediate.mul(2);
    });
    expect(liveTensors()).toBe(before + 1);
    expect(intermediate!.disposed).toBe(true);
    expect(r.disposed).toBe(false);
    expect(outside.disposed).toBe(false); // created outside the scope: untouched
    expect(Array.from(r.toFloat32Array())).toEqual([4, 4]);

    const { a, list } = tidy(() => {
      const tmp = outside.mul(3);
      return { a: tmp.add(1), list: [tmp.sub(1), tmp.neg()], n: 3 };
    });
    expect(liveTensors()).toBe(before + 4);
    expect([a, ...list].every((t) => !t.disposed)).toBe(true);

    // Nested: the inner result moves to the outer scope and is disposed there unless returned.
    let inner: Tensor | null = null;
    const outer = tidy(() => {
      inner = tidy(() => outside.add(5).mul(2));
      return inner.add(1);
    });
    expect(inner!.disposed).toBe(true);
    expect(outer.disposed).toBe(false);
    expect(liveTensors()).toBe(before + 5);
    for (const t of [r, a, ...list, outer]) t.dispose();
    expect(liveTensors()).toBe(before);
    outside.dispose();
  });

  it('tidy disposes everything when its function throws; keep() opts out', () => {
    const before = liveTensors();
    let made: Tensor | null = null;
    expect(() =>
      tidy(() => {
        made = Tensor.zeros([3]);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(made!.disposed).toBe(true);
    expect(liveTensors()).toBe(before);
    let kept: Tensor | null = null;
    tidy(() => {
      kept = keep(Tensor.ones([2]));
      Tensor.zeros([2]);
    });
    expect(kept!.disposed).toBe(false);
    expect(liveTensors()).toBe(before + 1);
    kept!.dispose();
    expect(liveTensors()).toBe(before);
  });

  it('a training-like step in tidy returns liveTensors to its starting value', () => {
    const w = g64([3, 3]);
    const x = c64([2, 3], uniform(6));
    const before = liveTensors();
    for (let i = 0; i < 3; i++) {
      tidy(() => {
        x.matmul(w).tanh().square().mean().backward();
        noGrad(() => w.add_(w.grad!, -0.1));
        w.grad = null;
      });
      expect(liveTensors()).toBe(before);
    }
    w.dispose();
    x.dispose();
  });

  it('noGrad stops graph recording and restores the mode (also on throw)', () => {
    const x = g64([2]);
    expect(isGradEnabled()).toBe(true);
    const y = x.mul(2);
    expect(y.requiresGrad).toBe(true);
    expect(y.isLeaf).toBe(false);
    const z = noGrad(() => {
      expect(isGradEnabled()).toBe(false);
      return x.mul(2);
    });
    expect(z.requiresGrad).toBe(false);
    expect(z.isLeaf).toBe(true);
    expect(isGradEnabled()).toBe(true);
    expect(() => noGrad(() => z.sum().backward())).toThrow(/does not require grad/);
    expect(() =>
      noGrad(() => {
        throw new Error('inner');
      }),
    ).toThrow('inner');
    expect(isGradEnabled()).toBe(true);
    // Nested noGrad keeps it off until the outermost returns.
    noGrad(() => {
      noGrad(() => undefined);
      expect(isGradEnabled()).toBe(false);
    });
    expect(isGradEnabled()).toBe(true);
  });

  it('gradients accumulate over backward calls until cleared; retainGraph allows a second backward', () => {
    const x = g64([2], [1, 2]);
    const y = x.mul(x).sum();
    y.backward(undefined, true);
    expect(values(x.grad!)).toEqual([2, 4]);
    y.backward();
    expect(values(x.grad!)).toEqual([4, 8]);
    x.grad = null;
    expect(x.grad).toBeNull();
    const q = x.mul(3);
    q.backward(c64([2], [1, -1]));
    expect(values(x.grad!)).toEqual([3, -3]);
  });
});

describe('errors, facts and data round trips', () => {
  it('reports clear errors', () => {
    expect(() => Tensor.zeros([2, 3]).add(Tensor.zeros([4]))).toThrow(
      /size of tensor a \(3\) must match the size of tensor b \(4\) at non-singleton dimension 1/,
    );
    expect(() => Tensor.zeros([2, 3]).matmul(Tensor.zeros([2, 3]))).toThrow(/cannot be multiplied \(2x3 and 2x3\)/);
    const d = Tensor.zeros([2]);
    d.dispose();
    expect(d.disposed).toBe(true);
    expect(() => d.add(1)).toThrow(/tensor was disposed/);
    expect(() => d.shape).toThrow(/tensor was disposed/);
    expect(() => d.toArray()).toThrow(/tensor was disposed/);
    expect(() => d.dispose()).not.toThrow(); // disposing twice is harmless
    expect(() => Tensor.zeros([2], { dtype: 'float128' as never })).toThrow(/unknown dtype 'float128'/);
    expect(() => Tensor.from([1, 2], [2], { dtype: 'complex' as never })).toThrow(/unknown dtype 'complex'/);
    expect(() => Tensor.from([1, 2, 3, 4, 5], [2, 3])).toThrow(/shape has 6 elements but the array has 5/);
    expect(() => Tensor.zeros([2, -1])).toThrow(/shape must be an array of non-negative integers/);
    expect(() => Tensor.zeros([2]).item()).toThrow(/exactly one element/);
    expect(() => Tensor.zeros([2, 3]).transpose(0, 1).view([6])).toThrow(/view size is not compatible/);
    expect(() => Tensor.zeros([1, 2, 3]).pad([1, 1, 1, 1], 'reflect')).toThrow(/reflect padding supports 4-D/);
    expect(() => Tensor.zeros([2]).sum().backward()).toThrow(/does not require grad/);
  });

  it('reports dtype, shape, ndim, numel, device, requiresGrad', () => {
    const t = Tensor.zeros([2, 3, 4], { dtype: 'float64', requiresGrad: true });
    expect(t.shape).toEqual([2, 3, 4]);
    expect(t.ndim).toBe(3);
    expect(t.numel).toBe(24);
    expect(t.dtype).toBe('float64');
    expect(t.device).toBe('cpu');
    expect(t.requiresGrad).toBe(true);
    expect(t.isLeaf).toBe(true);
    expect(String(t)).toBe('Tensor(shape=[2, 3, 4], dtype=float64, device=cpu)');
    const s = Tensor.full([], 3);
    expect(s.shape).toEqual([]);
    expect(s.numel).toBe(1);
    expect(s.item()).toBe(3);
    expect(Tensor.zeros([0, 3]).numel).toBe(0);
    for (const dt of [
      'float32',
      'float64',
      'float16',
      'bfloat16',
      'int32',
      'int64',
      'int8',
      'uint8',
      'bool',
    ] as const) {
      expect(Tensor.zeros([1], { dtype: dt }).dtype).toBe(dt);
    }
    expect(Tensor.from([1, 2]).dtype).toBe('float32'); // plain arrays default to float32
    expect(Tensor.arange(3).dtype).toBe('int64');
    expect(Tensor.ones([2]).to('float64').dtype).toBe('float64');
    expect(Tensor.ones([2]).to('cpu').device).toBe('cpu');
  });

  it('toArray round trips float32, float64, int32, int64, uint8, bool (and row-major for views)', () => {
    const f32a = Float32Array.of(1.5, -0, Infinity, -Infinity, 3.4028234663852886e38, 1e-45, -2.25);
    const r32 = Tensor.from(f32a, [7]).toArray();
    expect(r32).toBeInstanceOf(Float32Array);
    expect(list(r32)).toEqual(list(f32a));
    expect(Object.is(r32[1], -0)).toBe(true);
    expect(Number.isNaN(Tensor.from(Float32Array.of(NaN), [1]).toArray()[0])).toBe(true);

    const f64a = Float64Array.of(Math.PI, -1e-300, 1e300, Number.MIN_VALUE, 0.1 + 0.2);
    const r64 = Tensor.from(f64a, [5]).toArray();
    expect(r64).toBeInstanceOf(Float64Array);
    expect(list(r64)).toEqual(list(f64a));

    const i32 = Int32Array.of(-2147483648, 2147483647, 0, -1, 12345);
    const ri32 = Tensor.from(i32, [5]).toArray();
    expect(ri32).toBeInstanceOf(Int32Array);
    expect(list(ri32)).toEqual(list(i32));

    const i64 = BigInt64Array.of(-(2n ** 63n), 2n ** 63n - 1n, 2n ** 53n + 1n, -7n);
    const ri64 = Tensor.from(i64, [2, 2]).toArray();
    expect(ri64).toBeInstanceOf(BigInt64Array);
    expect(list(ri64)).toEqual(list(i64));

    const u8 = Uint8Array.of(0, 1, 127, 128, 255);
    const ru8 = Tensor.from(u8, [5]).toArray();
    expect(ru8).toBeInstanceOf(Uint8Array);
    expect(list(ru8)).toEqual(list(u8));

    const b = Tensor.from(Uint8Array.of(0, 1, 2), [3], { dtype: 'bool' });
    expect(b.dtype).toBe('bool');
    expect(list(b.toArray())).toEqual([0, 1, 1]);

    // Conversions on creation and views: values come back row-major in the logical layout.
    const conv = Tensor.from(Float32Array.of(1.7, -1.7, 2.5), [3], { dtype: 'int32' });
    expect(list(conv.toArray())).toEqual([1, -1, 2]); // truncation toward zero, like torch
    const t = Tensor.from(Int32Array.of(1, 2, 3, 4, 5, 6), [2, 3]).transpose(0, 1);
    expect(list(t.toArray())).toEqual([1, 4, 2, 5, 3, 6]);
    expect(Tensor.from(BigInt64Array.of(5n), [1]).item()).toBe(5);
  });

  // int8 comes back as an Int8Array (safetensors I8 depends on it).
  it('toArray round trips int8 as an Int8Array', () => {
    const i8 = Int8Array.of(-128, -1, 0, 127);
    const r = Tensor.from(i8, [4]).toArray();
    expect(r).toBeInstanceOf(Int8Array);
  });

  it('int8 values survive toArray (as float32 numbers, see the bug above)', () => {
    const r = Tensor.from(Int8Array.of(-128, -1, 0, 127), [4]).toArray();
    expect(Array.from(r as ArrayLike<number>)).toEqual([-128, -1, 0, 127]);
  });

  it('randn/rand are reproducible under manualSeed', () => {
    manualSeed(42);
    const a = values(Tensor.randn([5]));
    const u = values(Tensor.rand([5]));
    manualSeed(42);
    expect(values(Tensor.randn([5]))).toEqual(a);
    expect(values(Tensor.rand([5]))).toEqual(u);
    expect(u.every((v) => v >= 0 && v < 1)).toBe(true);
  });
});
