/**
 * Optimisers updating parameters in place, without autograd. Their state can be saved and restored so training
 * resumes exactly.
 */
import { Tensor, foreach, noGrad, tidy, keep } from '../engine/index.js';

export interface Optimizer {
  step(): void;
  zeroGrad(): void;
  /** Learning rate, changeable between steps (schedules). */
  lr: number;
  stateDict(): Map<string, Tensor>;
  loadStateDict(state: Map<string, Tensor>): void;
  dispose(): void;
}

export interface AdamOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** Adam (Kingma & Ba 2015) with PyTorch's update rule and L2 weight decay added to the gradient. */
export class Adam implements Optimizer {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  /** Steps per parameter: a parameter's bias correction counts only the steps in which it had a gradient. */
  private readonly stepCounts: number[];
  private readonly expAvg: Tensor[];
  private readonly expAvgSq: Tensor[];

  constructor(
    private readonly params: Tensor[],
    o: AdamOptions = {},
  ) {
    this.lr = o.lr ?? 1e-3;
    this.betas = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    this.weightDecay = o.weightDecay ?? 0;
    this.expAvg = params.map((p) => keep(Tensor.zerosLike(p)));
    this.expAvgSq = params.map((p) => keep(Tensor.zerosLike(p)));
    this.stepCounts = params.map(() => 0);
  }

  zeroGrad(): void {
    for (const p of this.params) p.grad = null;
  }

  /** One update of every parameter that has a gradient, with multi-tensor operators (see engine/foreach). */
  step(): void {
    const [b1, b2] = this.betas;
    noGrad(() =>
      tidy(() => {
        const active: number[] = [];
        const grads: Tensor[] = [];
        this.params.forEach((p, i) => {
          const g = p.grad;
          if (g) {
            active.push(i);
            grads.push(g);
          }
        });
        if (active.length === 0) return;
        const params = active.map((i) => this.params[i]);
        const expAvg = active.map((i) => this.expAvg[i]);
        const expAvgSq = active.map((i) => this.expAvgSq[i]);
        const steps = active.map((i) => ++this.stepCounts[i]);
        const g = this.weightDecay ? foreach.add(grads, params, this.weightDecay) : grads;
        // PyTorch's rule: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        foreach.mul_(expAvg, b1);
        foreach.add_(expAvg, g, 1 - b1);
        foreach.mul_(expAvgSq, b2);
        foreach.addcmul_(expAvgSq, g, g, 1 - b2);
        const denom = foreach.sqrt(expAvgSq);
        foreach.div_(
          denom,
          steps.map((n) => Math.sqrt(1 - b2 ** n)),
        );
        foreach.addScalar_(denom, this.eps);
        foreach.addcdiv_(
          params,
          expAvg,
          denom,
          steps.map((n) => -this.lr / (1 - b1 ** n)),
        );
      }),
    );
  }

  stateDict(): Map<string, Tensor> {
    const m = new Map<string, Tensor>();
    m.set('step', Tensor.from(Float64Array.from(this.stepCounts), [this.stepCounts.length], { dtype: 'float64' }));
    this.params.forEach((_, i) => {
      m.set(`exp_avg.${i}`, this.expAvg[i]);
      m.set(`exp_avg_sq.${i}`, this.expAvgSq[i]);
    });
    return m;
  }

  loadStateDict(state: Map<string, Tensor>): void {
    const step = state.get('step');
    if (!step) throw new Error('optimizer state has no step entry');
    this.params.forEach((p, i) => {
      for (const [name, own] of [
        [`exp_avg.${i}`, this.expAvg[i]],
        [`exp_avg_sq.${i}`, this.expAvgSq[i]],
      ] as const) {
        const t = state.get(name);
        if (!t) throw new Error(`optimizer state is missing '${name}'`);
        if (t.shape.join(',') !== p.shape.join(','))
          throw new Error(`optimizer state '${name}' has the wrong shape [${t.shape}]`);
        noGrad(() => own.copy_(t));
      }
    });
    const counts = step.toArray();
    if (counts.length !== this.stepCounts.length)
      throw new Error(`optimizer state has ${counts.length} step counts for ${this.stepCounts.length} parameters`);
    counts.forEach((c, i) => (this.stepCounts[i] = Number(c)));
  }

  dispose(): void {
    for (const t of [...this.expAvg, ...this.expAvgSq]) t.dispose();
  }
}

export interface SgdOptions {
  lr?: number;
  momentum?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

/** SGD with optional momentum / Nesterov, PyTorch's formulation. */
export class SGD implements Optimizer {
  lr: number;
  readonly momentum: number;
  readonly nesterov: boolean;
  readonly weightDecay: number;
  private readonly velocity: (Tensor | null)[];

  constructor(
    private readonly params: Tensor[],
    o: SgdOptions = {},
  ) {
    this.lr = o.lr ?? 1e-2;
    this.momentum = o.momentum ?? 0;
    this.nesterov = o.nesterov ?? false;
    this.weightDecay = o.weightDecay ?? 0;
    this.velocity = params.map(() => null);
  }

  zeroGrad(): void {
    for (const p of this.params) p.grad = null;
  }

  step(): void {
    noGrad(() =>
      tidy(() => {
        this.params.forEach((p, i) => {
          let g = p.grad;
          if (!g) return;
          if (this.weightDecay) g = g.add(p, this.weightDecay);
          if (this.momentum) {
            let v = this.velocity[i];
            if (!v) {
              v = keep(g.clone());
              this.velocity[i] = v;
            } else {
              v.mul_(this.momentum).add_(g);
            }
            g = this.nesterov ? g.add(v, this.momentum) : v;
          }
          p.add_(g, -this.lr);
        });
      }),
    );
  }

  stateDict(): Map<string, Tensor> {
    const m = new Map<string, Tensor>();
    this.velocity.forEach((v, i) => v && m.set(`momentum_buffer.${i}`, v));
    return m;
  }

  loadStateDict(state: Map<string, Tensor>): void {
    this.params.forEach((p, i) => {
      const t = state.get(`momentum_buffer.${i}`);
      if (!t) return;
      if (t.shape.join(',') !== p.shape.join(','))
        throw new Error(`optimizer state 'momentum_buffer.${i}' has the wrong shape`);
      this.velocity[i]?.dispose();
      this.velocity[i] = keep(noGrad(() => t.clone()));
    });
  }

  dispose(): void {
    for (const v of this.velocity) v?.dispose();
  }
}
