/**
 * Multi-tensor ("_foreach_") operators: one call updates a whole list of tensors, as PyTorch's multi-tensor
 * optimisers do. An optimiser step over ~100 parameters then crosses the binding ~10 times instead of ~1,000.
 * The in-place forms modify the tensors of their first list; lists must have equal lengths.
 */
import { op, type Tensor } from './tensor.js';

function sameLength(name: string, ...lists: readonly (readonly unknown[])[]): void {
  if (lists.some((l) => l.length !== lists[0].length)) {
    throw new Error(`foreach.${name}: lists of different lengths (${lists.map((l) => l.length).join(', ')})`);
  }
}

/** t *= s for every t. */
export function mul_(ts: readonly Tensor[], s: number): void {
  op('aten::_foreach_mul_.Scalar', ts, s);
}

/** t += s for every t. */
export function addScalar_(ts: readonly Tensor[], s: number): void {
  op('aten::_foreach_add_.Scalar', ts, s);
}

/** t[i] += alpha * other[i]. */
export function add_(ts: readonly Tensor[], others: readonly Tensor[], alpha = 1): void {
  sameLength('add_', ts, others);
  op('aten::_foreach_add_.List', ts, others, alpha);
}

/** t[i] + alpha * other[i], as new tensors. */
export function add(ts: readonly Tensor[], others: readonly Tensor[], alpha = 1): Tensor[] {
  sameLength('add', ts, others);
  return op('aten::_foreach_add.List', ts, others, alpha) as Tensor[];
}

/** t[i] += value * a[i] * b[i]. */
export function addcmul_(ts: readonly Tensor[], a: readonly Tensor[], b: readonly Tensor[], value: number): void {
  sameLength('addcmul_', ts, a, b);
  op('aten::_foreach_addcmul_.Scalar', ts, a, b, value);
}

/** t[i] += values[i] * a[i] / b[i]. */
export function addcdiv_(
  ts: readonly Tensor[],
  a: readonly Tensor[],
  b: readonly Tensor[],
  values: readonly number[],
): void {
  sameLength('addcdiv_', ts, a, b, values);
  op('aten::_foreach_addcdiv_.ScalarList', ts, a, b, values);
}

/** t[i] /= divisors[i]. */
export function div_(ts: readonly Tensor[], divisors: readonly number[]): void {
  sameLength('div_', ts, divisors);
  op('aten::_foreach_div_.ScalarList', ts, divisors);
}

/** sqrt(t) for every t, as new tensors. */
export function sqrt(ts: readonly Tensor[]): Tensor[] {
  return op('aten::_foreach_sqrt', ts) as Tensor[];
}
