/**
 * Neural-network functions over the tensor API (the analogue of torch.nn.functional).
 * Everything here is differentiable through libtorch's autograd.
 */
import { Tensor, callOp as opT, tidy } from './tensor.js';

export type Pair = number | readonly [number, number];

function pair(v: Pair): [number, number] {
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

export interface Conv2dOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
}

/**
 * Counts the multiply-adds of convolutions (2 FLOPs each) while enabled, for benchmarks: the FLOPs of the
 * mathematical operation, whatever algorithm computes it. Backward costs about twice the forward.
 */
export const flopCounter = { enabled: false, flops: 0 };

function convFlops(x: Tensor, weight: Tensor, out: Tensor, transposed: boolean): number {
  if (transposed) {
    // Every input pixel scatters into Cout*kh*kw outputs.
    const [n, cin, h, w] = x.shape;
    const [, cout, kh, kw] = weight.shape;
    return 2 * n * cin * h * w * cout * kh * kw;
  }
  const [n, cout, h, w] = out.shape;
  const [, cinPerGroup, kh, kw] = weight.shape;
  return 2 * n * cout * h * w * cinPerGroup * kh * kw;
}

/** Runs a convolution, counting its FLOPs once (nested convolutions of a sub-pixel plan are not counted). */
function counted(x: Tensor, weight: Tensor, transposed: boolean, run: () => Tensor): Tensor {
  if (!flopCounter.enabled) return run();
  flopCounter.enabled = false;
  try {
    const y = run();
    flopCounter.flops += convFlops(x, weight, y, transposed);
    return y;
  } finally {
    flopCounter.enabled = true;
  }
}

export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null = null, o: Conv2dOptions = {}): Tensor {
  return counted(x, weight, false, () =>
    opT(
      'aten::conv2d',
      x,
      weight,
      bias,
      pair(o.stride ?? 1),
      pair(o.padding ?? 0),
      pair(o.dilation ?? 1),
      o.groups ?? 1,
    ),
  );
}

export interface ConvTranspose2dOptions {
  stride?: Pair;
  padding?: Pair;
  outputPadding?: Pair;
  /** 'auto' uses the sub-pixel decomposition when it applies, 'direct' always calls libtorch's kernel. */
  algorithm?: 'auto' | 'subpixel' | 'direct';
}

/** libtorch's own transposed convolution (slow_conv_transpose2d on CPU without oneDNN support). */
function convTranspose2dDirect(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  stride: [number, number],
  padding: [number, number],
  outputPadding: [number, number],
): Tensor {
  return opT('aten::conv_transpose2d.input', x, weight, bias, stride, padding, outputPadding, 1, [1, 1]);
}

/**
 * One spatial dimension of the sub-pixel plan. A transposed convolution with kernel k = s*T, stride s and
 * padding p writes output o = s*i + kk - p. Output phase a (o = s*m + a, m = 0..M-1) only receives kernel taps
 * kk ≡ (a + p) mod s, so each phase is a plain T-tap correlation over the input: phase a at position m reads
 * input rows m + c_a - (T-1) + t, t = 0..T-1, with kernel tap s*(T-1-t) + r_a.
 * Each phase therefore is one regular convolution over the input padded (or cropped: negative padding) by
 * [T-1-c_a, M+c_a-H]; interleaving the phase outputs gives exactly the transposed convolution.
 * Padding per phase (instead of slicing one big convolution's output) keeps the backward pass cheap: the
 * gradient of a pad is a crop, while the gradient of a slice zero-fills a full-size tensor.
 */
interface SubpixelAxis {
  taps: number; // T
  length: number; // M, output positions per phase
  pads: [number, number][]; // per phase: [before, after]
  kernelIndex: number[]; // [phase * T + t] -> index into the original kernel
}

function planAxis(inSize: number, k: number, s: number, p: number, outPad: number): SubpixelAxis | null {
  if (k % s !== 0) return null;
  const outSize = (inSize - 1) * s - 2 * p + k + outPad;
  if (outSize <= 0 || outSize % s !== 0) return null;
  const T = k / s;
  const M = outSize / s;
  const pads: [number, number][] = [];
  const kernelIndex: number[] = [];
  for (let a = 0; a < s; a++) {
    const r = (((a + p) % s) + s) % s;
    const c = Math.floor((a + p) / s);
    pads.push([T - 1 - c, M + c - inSize]);
    for (let t = 0; t < T; t++) kernelIndex.push(s * (T - 1 - t) + r);
  }
  return { taps: T, length: M, pads, kernelIndex };
}

function convTranspose2dSubpixel(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  stride: [number, number],
  rows: SubpixelAxis,
  cols: SubpixelAxis,
): Tensor {
  return tidy(() => {
    const [cin, cout] = weight.shape;
    const [sh, sw] = stride;
    const [n] = x.shape;
    // weight [Cin, Cout, kh, kw] -> per phase (a, b): [Cout, Cin, Th, Tw]
    const idxH = Tensor.from(Int32Array.from(rows.kernelIndex), [rows.kernelIndex.length], { dtype: 'int64' });
    const idxW = Tensor.from(Int32Array.from(cols.kernelIndex), [cols.kernelIndex.length], { dtype: 'int64' });
    const k = weight
      .indexSelect(2, idxH)
      .indexSelect(3, idxW)
      .reshape([cin, cout, sh, rows.taps, sw, cols.taps])
      .permute([2, 4, 1, 0, 3, 5])
      .reshape([sh * sw * cout, cin, rows.taps, cols.taps]);
    const phases: Tensor[] = [];
    for (let a = 0; a < sh; a++) {
      for (let b = 0; b < sw; b++) {
        const [top, bottom] = rows.pads[a];
        const [left, right] = cols.pads[b];
        const xa = top || bottom || left || right ? x.pad([left, right, top, bottom]) : x;
        const ch = (a * sw + b) * cout;
        phases.push(conv2d(xa, k.slice(0, ch, ch + cout), bias));
      }
    }
    // Interleave the phases into the output grid, built channels-last: memory [n, m, a, q, b, cout] viewed as
    // [n, cout, m*sh, q*sw]. Two stacks of [n, m, q, cout] views (contiguous for channels-last phases) copy whole
    // channel vectors; their backward is two strided views, made contiguous once by the phase convolutions.
    // (Stacking along one new axis and permuting into place costs a slow 6-D gather forward and backward.)
    const pixels = phases.map((ph) => ph.permute([0, 2, 3, 1])); // [n, m, q, cout]
    const rowsOfPhases: Tensor[] = [];
    for (let a = 0; a < sh; a++) rowsOfPhases.push(Tensor.stack(pixels.slice(a * sw, (a + 1) * sw), 3)); // [n, m, q, sw, cout]
    return Tensor.stack(rowsOfPhases, 2) // [n, m, sh, q, sw, cout]
      .view([n, rows.length * sh, cols.length * sw, cout])
      .permute([0, 3, 1, 2]);
  });
}

/**
 * Transposed convolution (weight [Cin, Cout, kh, kw], groups 1, dilation 1). When the kernel is a multiple of
 * the stride (e.g. kernel 4, stride 2 — every decoder of AnoSeg) it runs as one regular convolution plus a
 * pixel interleave, which is exact and much faster on CPU than libtorch's slow_conv_transpose2d.
 */
export function convTranspose2d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null = null,
  o: ConvTranspose2dOptions = {},
): Tensor {
  const stride = pair(o.stride ?? 1);
  const padding = pair(o.padding ?? 0);
  const outputPadding = pair(o.outputPadding ?? 0);
  const algorithm = o.algorithm ?? 'auto';
  if (x.ndim !== 4 || weight.ndim !== 4) throw new Error('convTranspose2d: expects 4-D input and weight');
  if (weight.shape[0] !== x.shape[1]) {
    throw new Error(`convTranspose2d: input has ${x.shape[1]} channels, weight expects ${weight.shape[0]}`);
  }
  return counted(x, weight, true, () =>
    convTranspose2dPlanned(x, weight, bias, stride, padding, outputPadding, algorithm),
  );
}

function convTranspose2dPlanned(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  stride: [number, number],
  padding: [number, number],
  outputPadding: [number, number],
  algorithm: 'auto' | 'subpixel' | 'direct',
): Tensor {
  if (algorithm !== 'direct') {
    const rows = planAxis(x.shape[2], weight.shape[2], stride[0], padding[0], outputPadding[0]);
    const cols = planAxis(x.shape[3], weight.shape[3], stride[1], padding[1], outputPadding[1]);
    if (rows && cols) return convTranspose2dSubpixel(x, weight, bias, stride, rows, cols);
    if (algorithm === 'subpixel') throw new Error('convTranspose2d: sub-pixel path needs kernel % stride == 0');
  }
  return convTranspose2dDirect(x, weight, bias, stride, padding, outputPadding);
}

export interface BatchNormOptions {
  training: boolean;
  momentum?: number;
  eps?: number;
}

/** Batch normalisation; in training mode running statistics are updated in place (as torch does). */
export function batchNorm(
  x: Tensor,
  runningMean: Tensor | null,
  runningVar: Tensor | null,
  weight: Tensor | null,
  bias: Tensor | null,
  o: BatchNormOptions,
): Tensor {
  return opT(
    'aten::batch_norm',
    x,
    weight,
    bias,
    runningMean,
    runningVar,
    o.training,
    o.momentum ?? 0.1,
    o.eps ?? 1e-5,
    true,
  );
}

export function maxPool2d(x: Tensor, kernel: Pair, stride?: Pair, padding: Pair = 0): Tensor {
  return opT('aten::max_pool2d', x, pair(kernel), pair(stride ?? kernel), pair(padding), [1, 1], false);
}

export function avgPool2d(x: Tensor, kernel: Pair, stride?: Pair, padding: Pair = 0): Tensor {
  return opT('aten::avg_pool2d', x, pair(kernel), pair(stride ?? kernel), pair(padding), false, true, null);
}

export function adaptiveAvgPool2d(x: Tensor, output: Pair): Tensor {
  return opT('aten::adaptive_avg_pool2d', x, pair(output));
}

/** Resizes [N, C, H, W] to size; bilinear uses align_corners = false (PyTorch's default). */
export function interpolate(x: Tensor, size: Pair, mode: 'bilinear' | 'nearest' = 'bilinear'): Tensor {
  const s = pair(size);
  if (mode === 'nearest') return opT('aten::upsample_nearest2d', x, s, null, null);
  return opT('aten::upsample_bilinear2d', x, s, false, null, null);
}

export function relu(x: Tensor): Tensor {
  return x.relu();
}

export function leakyRelu(x: Tensor, slope = 0.01): Tensor {
  return x.leakyRelu(slope);
}

export function sigmoid(x: Tensor): Tensor {
  return x.sigmoid();
}

export function tanh(x: Tensor): Tensor {
  return x.tanh();
}

export function softmax(x: Tensor, dim: number): Tensor {
  return opT('aten::softmax.int', x, dim, null);
}

export function logSoftmax(x: Tensor, dim: number): Tensor {
  return opT('aten::log_softmax.int', x, dim, null);
}

export function dropout(x: Tensor, p: number, training: boolean): Tensor {
  return opT('aten::dropout', x, p, training);
}

export type Reduction = 'mean' | 'sum' | 'none';
const REDUCTION: Record<Reduction, number> = { none: 0, mean: 1, sum: 2 };

export function l1Loss(input: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return opT('aten::l1_loss', input, target, REDUCTION[reduction]);
}

export function mseLoss(input: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return opT('aten::mse_loss', input, target, REDUCTION[reduction]);
}

/** Binary cross-entropy on probabilities (log clamped at -100 like PyTorch). */
export function bceLoss(input: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return opT('aten::binary_cross_entropy', input, target, null, REDUCTION[reduction]);
}

/** Binary cross-entropy on logits (numerically stable). */
export function bceWithLogits(logits: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return opT('aten::binary_cross_entropy_with_logits', logits, target, null, null, REDUCTION[reduction]);
}

/** Cross-entropy of logits [N, C] against integer class targets [N] (int64). */
export function crossEntropy(logits: Tensor, target: Tensor, reduction: Reduction = 'mean'): Tensor {
  return opT('aten::cross_entropy_loss', logits, target, null, REDUCTION[reduction], -100, 0);
}
