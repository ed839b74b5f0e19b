import { Tensor, keep, noGrad } from '../engine/index.js';

/**
 * Base class of every network piece, with torch.nn.Module's mental model: named parameters and buffers,
 * child modules, train/eval mode, a state dict. Parameters and buffers are owned by the module (kept out of
 * tidy scopes) and freed by dispose().
 */
export abstract class Module {
  training = true;
  private readonly params = new Map<string, Tensor>();
  private readonly buffers = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  /** Registers a trainable tensor (requires grad). */
  protected registerParameter(name: string, t: Tensor): Tensor {
    this.checkName(name);
    keep(t);
    t.requiresGrad = true;
    this.params.set(name, t);
    return t;
  }

  /** Registers a non-trainable state tensor (e.g. BatchNorm running statistics). */
  protected registerBuffer(name: string, t: Tensor): Tensor {
    this.checkName(name);
    keep(t);
    this.buffers.set(name, t);
    return t;
  }

  protected registerModule<M extends Module>(name: string, m: M): M {
    this.checkName(name);
    this.children.set(name, m);
    return m;
  }

  private checkName(name: string): void {
    if (!name || name.includes('.')) throw new Error(`invalid module member name '${name}'`);
    if (this.params.has(name) || this.buffers.has(name) || this.children.has(name)) {
      throw new Error(`duplicate module member name '${name}'`);
    }
  }

  namedChildren(): [string, Module][] {
    return [...this.children.entries()];
  }

  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, p] of this.params) out.push([prefix + n, p]);
    for (const [n, c] of this.children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /**
   * Runs fn with this module's parameters not requiring grad, so the graph built inside records no gradient for
   * them while gradients still flow through the module to its inputs: an adversary judging the other network's
   * output during that network's update (its own gradients would be computed, then discarded).
   */
  frozen<T>(fn: () => T): T {
    const trainable = this.parameters().filter((p) => p.requiresGrad);
    for (const p of trainable) p.requiresGrad = false;
    try {
      return fn();
    } finally {
      for (const p of trainable) p.requiresGrad = true;
    }
  }

  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, b] of this.buffers) out.push([prefix + n, b]);
    for (const [n, c] of this.children) out.push(...c.namedBuffers(`${prefix}${n}.`));
    return out;
  }

  /** Parameters and buffers by dotted name (PyTorch's state_dict naming). */
  stateDict(): Map<string, Tensor> {
    return new Map([...this.namedParameters(), ...this.namedBuffers()]);
  }

  /**
   * Copies values into this module's tensors. Every name must exist with the same shape; with strict (default)
   * the state must also cover every tensor. Errors name the offending entries; nothing is changed on error.
   */
  loadStateDict(state: Map<string, Tensor>, strict = true): void {
    const own = this.stateDict();
    const problems: string[] = [];
    for (const [name, t] of state) {
      const target = own.get(name);
      if (!target) {
        if (strict) problems.push(`unexpected entry '${name}'`);
        continue;
      }
      if (target.shape.join(',') !== t.shape.join(',')) {
        problems.push(`'${name}' has shape [${t.shape}] but the model expects [${target.shape}]`);
      }
    }
    if (strict) for (const name of own.keys()) if (!state.has(name)) problems.push(`missing entry '${name}'`);
    if (problems.length) {
      const shown = problems.slice(0, 8).join('; ');
      throw new Error(
        `state does not fit the model: ${shown}${problems.length > 8 ? ` (+${problems.length - 8} more)` : ''}`,
      );
    }
    noGrad(() => {
      for (const [name, t] of state) {
        const target = own.get(name);
        if (!target) continue;
        if (target.dtype === t.dtype) target.copy_(t);
        else {
          const converted = t.to(target.dtype);
          target.copy_(converted);
          converted.dispose();
        }
      }
    });
  }

  train(mode = true): this {
    this.training = mode;
    for (const c of this.children.values()) c.train(mode);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  numParameters(): number {
    return this.parameters().reduce((n, p) => n + p.numel, 0);
  }

  /** Clears accumulated gradients (set to null, like zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const p of this.parameters()) p.grad = null;
  }

  /** Frees all parameters and buffers (recursively). The module is unusable afterwards. */
  dispose(): void {
    for (const p of this.params.values()) p.dispose();
    for (const b of this.buffers.values()) b.dispose();
    for (const c of this.children.values()) c.dispose();
  }
}

/** A module with one tensor in and one tensor out; these compose in Sequential. */
export abstract class Layer extends Module {
  abstract forward(x: Tensor): Tensor;
}

export class Sequential extends Layer {
  readonly layers: Layer[];

  constructor(...layers: Layer[]) {
    super();
    this.layers = layers;
    layers.forEach((l, i) => this.registerModule(String(i), l));
  }

  forward(x: Tensor): Tensor {
    let y = x;
    for (const l of this.layers) y = l.forward(y);
    return y;
  }
}
