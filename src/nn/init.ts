/**
 * Weight initialisers. They draw from libtorch's generator, so `manualSeed` makes them reproducible.
 */
import { Tensor, noGrad, type Shape } from '../engine/index.js';

function fanIn(shape: Shape): number {
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

function fanOut(shape: Shape): number {
  return shape[0] * shape.slice(2).reduce((a, b) => a * b, 1);
}

/** U(-bound, bound) */
export function uniform(shape: Shape, bound: number): Tensor {
  const t = Tensor.zeros(shape);
  noGrad(() => t.uniform_(-bound, bound));
  return t;
}

/** N(0, std) */
export function normal(shape: Shape, std: number, mean = 0): Tensor {
  const t = Tensor.zeros(shape);
  noGrad(() => t.normal_(mean, std));
  return t;
}

/**
 * PyTorch's default for Conv/Linear weights: kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(fanIn), 1/sqrt(fanIn)).
 */
export function kaimingUniformDefault(shape: Shape, fan = fanIn(shape)): Tensor {
  return uniform(shape, 1 / Math.sqrt(fan));
}

/** He normal init for ReLU nets (torchvision's ResNet uses mode 'fan_out'). */
export function kaimingNormal(shape: Shape, mode: 'fan_in' | 'fan_out' = 'fan_out', negativeSlope = 0): Tensor {
  const gain = Math.sqrt(2 / (1 + negativeSlope * negativeSlope));
  const fan = mode === 'fan_in' ? fanIn(shape) : fanOut(shape);
  return normal(shape, gain / Math.sqrt(fan));
}

/** Overwrites an existing parameter in place (keeps its identity and requires-grad flag). */
export function fill(target: Tensor, source: Tensor): void {
  noGrad(() => target.copy_(source));
  source.dispose();
}
