/**
 * Finite-difference gradient checking (the analogue of torch.autograd.gradcheck), for tests.
 *
 * The scalar checked is L(x) = sum(fn(x) * W) with W fixed pseudo-random weights, so every output element
 * contributes with its own weight (a plain sum would hide errors that cancel, e.g. in softmax). Autograd's
 * dL/dx is compared elementwise with central differences (L(x + eps e_i) - L(x - eps e_i)) / (2 eps).
 */
import { Rng } from '../util/rng.js';
import { Tensor, noGrad, tidy } from './tensor.js';

export interface GradcheckOptions {
  /** Finite-difference step. */
  eps?: number;
  /** Absolute tolerance. */
  atol?: number;
  /** Relative tolerance (relative to the numerical gradient). */
  rtol?: number;
  /** Seed of the output weights W. */
  seed?: number;
}

export class GradcheckError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GradcheckError';
  }
}

function unravel(flat: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length).fill(0);
  let r = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = r % shape[d];
    r = Math.floor(r / shape[d]);
  }
  return idx;
}

function toFloat64(t: Tensor): Float64Array {
  const a = t.toArray();
  return a instanceof Float64Array ? a : Float64Array.from(a as ArrayLike<number>, Number);
}

/**
 * Checks autograd gradients of fn against central finite differences for every input that requires grad.
 * fn must be deterministic and read its tensors from the argument (perturbed copies are passed in for the
 * finite differences). Checked inputs and the output must be float64. The inputs' .grad is cleared.
 * Returns the largest |analytical - numerical| over all checked elements; throws GradcheckError naming the
 * input, the element and both values when any element differs by more than atol + rtol * |numerical|.
 */
export function gradcheck(fn: (inputs: Tensor[]) => Tensor, inputs: Tensor[], o: GradcheckOptions = {}): number {
  const eps = o.eps ?? 1e-6;
  const atol = o.atol ?? 1e-5;
  const rtol = o.rtol ?? 1e-3;
  const checked = inputs.map((t, i) => ({ t, i })).filter(({ t }) => t.requiresGrad);
  if (!checked.length) throw new GradcheckError('gradcheck: no input requires grad');
  for (const { t, i } of checked) {
    if (t.dtype !== 'float64') {
      throw new GradcheckError(`gradcheck: input ${i} is ${t.dtype}; finite differences need float64 inputs`);
    }
  }

  // Output shape and the fixed weights W.
  const outShape = tidy(() => {
    const y = noGrad(() => fn(inputs));
    if (y.dtype !== 'float64') throw new GradcheckError(`gradcheck: fn returned ${y.dtype}; it must return float64`);
    return y.shape;
  });
  const rng = new Rng(o.seed ?? 0x5eed);
  const wData = new Float64Array(outShape.reduce((a, b) => a * b, 1));
  for (let k = 0; k < wData.length; k++) wData[k] = 2 * rng.next() - 1;

  const weighted = (xs: Tensor[], w: Tensor): Tensor => fn(xs).mul(w).sum();

  // Analytical gradients.
  for (const { t } of checked) t.grad = null;
  let analytical: Float64Array[] = [];
  tidy(() => {
    const w = Tensor.from(wData, outShape, { dtype: 'float64' });
    const loss = weighted(inputs, w);
    // An output that does not depend on any input through autograd has zero gradients.
    if (loss.requiresGrad) loss.backward();
    analytical = checked.map(({ t }) => {
      const g = t.grad;
      return g ? toFloat64(g) : new Float64Array(t.numel);
    });
  });
  for (const { t } of checked) t.grad = null;

  // Numerical gradients and comparison.
  let maxError = 0;
  const mismatches: string[] = [];
  let mismatchCount = 0;
  let total = 0;
  checked.forEach(({ t, i }, c) => {
    const base = toFloat64(t);
    const shape = t.shape;
    const lossAt = (j: number, delta: number): number =>
      tidy(() =>
        noGrad(() => {
          const data = Float64Array.from(base);
          data[j] += delta;
          const xs = inputs.slice();
          xs[i] = Tensor.from(data, shape, { dtype: 'float64' });
          const v = weighted(xs, Tensor.from(wData, outShape, { dtype: 'float64' })).item();
          if (!Number.isFinite(v)) throw new GradcheckError(`gradcheck: fn is not finite near input ${i} element ${j}`);
          return v;
        }),
      );
    for (let j = 0; j < base.length; j++) {
      const numerical = (lossAt(j, eps) - lossAt(j, -eps)) / (2 * eps);
      const a = analytical[c][j];
      const err = Math.abs(a - numerical);
      total++;
      maxError = Math.max(maxError, Number.isNaN(err) ? Infinity : err);
      const tol = atol + rtol * Math.abs(numerical);
      if (!(err <= tol)) {
        mismatchCount++;
        if (mismatches.length < 5) {
          mismatches.push(
            `input ${i} [${shape}] at [${unravel(j, shape)}]: analytical ${a}, numerical ${numerical} (|diff| ${err.toExponential(3)} > ${tol.toExponential(3)})`,
          );
        }
      }
    }
  });
  if (mismatchCount) {
    throw new GradcheckError(
      `gradcheck failed: ${mismatchCount} of ${total} gradient elements differ from finite differences ` +
        `(eps ${eps}, atol ${atol}, rtol ${rtol}); max |diff| ${maxError.toExponential(3)}:\n  ${mismatches.join('\n  ')}`,
    );
  }
  return maxError;
}
