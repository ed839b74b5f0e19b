import { Tensor, F } from '../engine/index.js';
import { Layer } from './module.js';
import * as init from './init.js';

type Pair = F.Pair;

export interface ConvOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
}

function kernelPair(k: Pair): [number, number] {
  return typeof k === 'number' ? [k, k] : [k[0], k[1]];
}

export class Conv2d extends Layer {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernel: Pair,
    readonly options: ConvOptions = {},
  ) {
    super();
    const [kh, kw] = kernelPair(kernel);
    const groups = options.groups ?? 1;
    if (inChannels % groups || outChannels % groups) throw new Error('Conv2d: channels must divide by groups');
    this.weight = this.registerParameter(
      'weight',
      init.kaimingUniformDefault([outChannels, inChannels / groups, kh, kw]),
    );
    const fanIn = (inChannels / groups) * kh * kw;
    this.bias =
      options.bias === false ? null : this.registerParameter('bias', init.uniform([outChannels], 1 / Math.sqrt(fanIn)));
  }

  forward(x: Tensor): Tensor {
    return F.conv2d(x, this.weight, this.bias, this.options);
  }
}

export interface ConvTransposeOptions {
  stride?: Pair;
  padding?: Pair;
  outputPadding?: Pair;
  bias?: boolean;
  algorithm?: 'auto' | 'subpixel' | 'direct';
}

export class ConvTranspose2d extends Layer {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernel: Pair,
    readonly options: ConvTransposeOptions = {},
  ) {
    super();
    const [kh, kw] = kernelPair(kernel);
    // PyTorch computes fan-in of a transposed conv weight [Cin, Cout, kh, kw] from dim 1.
    this.weight = this.registerParameter(
      'weight',
      init.kaimingUniformDefault([inChannels, outChannels, kh, kw], outChannels * kh * kw),
    );
    this.bias =
      options.bias === false
        ? null
        : this.registerParameter('bias', init.uniform([outChannels], 1 / Math.sqrt(outChannels * kh * kw)));
  }

  forward(x: Tensor): Tensor {
    return F.convTranspose2d(x, this.weight, this.bias, this.options);
  }
}

export class BatchNorm2d extends Layer {
  readonly weight: Tensor;
  readonly bias: Tensor;
  readonly runningMean: Tensor;
  readonly runningVar: Tensor;
  readonly numBatchesTracked: Tensor;

  constructor(
    readonly channels: number,
    /** Weight of the new batch in the running statistics (mutable: BN re-estimation averages batches). */
    public momentum = 0.1,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.registerParameter('weight', Tensor.ones([channels]));
    this.bias = this.registerParameter('bias', Tensor.zeros([channels]));
    this.runningMean = this.registerBuffer('running_mean', Tensor.zeros([channels]));
    this.runningVar = this.registerBuffer('running_var', Tensor.ones([channels]));
    this.numBatchesTracked = this.registerBuffer('num_batches_tracked', Tensor.zeros([], { dtype: 'int64' }));
  }

  forward(x: Tensor): Tensor {
    if (this.training) this.numBatchesTracked.add_(1);
    return F.batchNorm(x, this.runningMean, this.runningVar, this.weight, this.bias, {
      training: this.training,
      momentum: this.momentum,
      eps: this.eps,
    });
  }
}

/** ReLU; with inplace it overwrites its input (torch's ReLU(inplace=True): after BatchNorm, saves a tensor). */
export class ReLU extends Layer {
  constructor(readonly inplace = false) {
    super();
  }

  forward(x: Tensor): Tensor {
    return this.inplace ? x.relu_() : x.relu();
  }
}

export class LeakyReLU extends Layer {
  constructor(
    readonly slope = 0.01,
    readonly inplace = false,
  ) {
    super();
  }

  forward(x: Tensor): Tensor {
    return this.inplace ? x.leakyRelu_(this.slope) : x.leakyRelu(this.slope);
  }
}

export class Sigmoid extends Layer {
  forward(x: Tensor): Tensor {
    return x.sigmoid();
  }
}

export class Tanh extends Layer {
  forward(x: Tensor): Tensor {
    return x.tanh();
  }
}

export class Identity extends Layer {
  forward(x: Tensor): Tensor {
    return x;
  }
}

export class MaxPool2d extends Layer {
  constructor(
    readonly kernel: Pair,
    readonly stride?: Pair,
    readonly padding: Pair = 0,
  ) {
    super();
  }

  forward(x: Tensor): Tensor {
    return F.maxPool2d(x, this.kernel, this.stride, this.padding);
  }
}

export class Upsample extends Layer {
  constructor(
    readonly scale: number,
    readonly mode: 'bilinear' | 'nearest' = 'nearest',
  ) {
    super();
  }

  forward(x: Tensor): Tensor {
    const [, , h, w] = x.shape;
    return F.interpolate(x, [Math.round(h * this.scale), Math.round(w * this.scale)], this.mode);
  }
}
