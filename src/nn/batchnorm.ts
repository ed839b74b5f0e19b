/** BatchNorm running statistics re-estimated from training batches after training (the last steps' drift removed). */
import { noGrad, tidy } from '../engine/index.js';
import { BatchNorm2d } from './layers.js';
import type { Module } from './module.js';

/** Every BatchNorm2d in `m` (itself included). */
export function batchNorms(m: Module): BatchNorm2d[] {
  const out: BatchNorm2d[] = m instanceof BatchNorm2d ? [m] : [];
  for (const [, c] of m.namedChildren()) out.push(...batchNorms(c));
  return out;
}

/**
 * Replaces the running statistics of every BatchNorm in `m` by the plain average of the batch statistics of
 * `batches` forward passes (`forward(k)` runs the k-th batch through the network, in a tidy scope without
 * gradients); momentum is back at 0.1 afterwards and `m` is left in training mode.
 */
export function reestimateBatchNorm(m: Module, batches: number, forward: (k: number) => void): void {
  const bns = batchNorms(m);
  m.train();
  noGrad(() => {
    for (let k = 0; k < batches; k++) {
      for (const bn of bns) bn.momentum = 1 / (k + 1);
      tidy(() => {
        forward(k);
      });
    }
  });
  for (const bn of bns) bn.momentum = 0.1;
}
