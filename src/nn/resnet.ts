import { Tensor } from '../engine/index.js';
import { Layer, Sequential } from './module.js';
import { BatchNorm2d, Conv2d, MaxPool2d, ReLU } from './layers.js';
import * as init from './init.js';

/** ResNet basic block (He et al. 2016): two 3x3 convs with BN, identity or 1x1 projection shortcut. */
export class BasicBlock extends Layer {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly downsample: Sequential | null;

  constructor(inChannels: number, outChannels: number, stride = 1) {
    super();
    this.conv1 = this.registerModule(
      'conv1',
      new Conv2d(inChannels, outChannels, 3, { stride, padding: 1, bias: false }),
    );
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(outChannels));
    this.conv2 = this.registerModule('conv2', new Conv2d(outChannels, outChannels, 3, { padding: 1, bias: false }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(outChannels));
    this.downsample =
      stride !== 1 || inChannels !== outChannels
        ? this.registerModule(
            'downsample',
            new Sequential(
              new Conv2d(inChannels, outChannels, 1, { stride, bias: false }),
              new BatchNorm2d(outChannels),
            ),
          )
        : null;
  }

  forward(x: Tensor): Tensor {
    const y = this.bn2.forward(this.conv2.forward(this.bn1.forward(this.conv1.forward(x)).relu_()));
    const shortcut = this.downsample ? this.downsample.forward(x) : x;
    return y.add(shortcut).relu_();
  }
}

export interface ResNet18Options {
  inChannels: number;
  /** Channel multiplier: 1 gives the standard 64-128-256-512 widths. */
  width?: number;
}

/**
 * The convolutional part of ResNet-18 (no pooling/classifier head). Stages keep torchvision's names
 * (layer1.0.conv1, ...); the stem is 'stem.0' (conv1) / 'stem.1' (bn1). forwardFeatures returns layer1..layer4.
 */
export class ResNet18 extends Layer {
  readonly channels: [number, number, number, number];
  readonly stem: Sequential;
  readonly layers: Sequential[];

  constructor(o: ResNet18Options) {
    super();
    const w = o.width ?? 1;
    this.channels = [64, 128, 256, 512].map((c) => Math.max(8, Math.round(c * w))) as [number, number, number, number];
    const c0 = this.channels[0];
    const conv1 = new Conv2d(o.inChannels, c0, 7, { stride: 2, padding: 3, bias: false });
    this.stem = this.registerModule(
      'stem',
      new Sequential(conv1, new BatchNorm2d(c0), new ReLU(true), new MaxPool2d(3, 2, 1)),
    );
    this.layers = [];
    let prev = c0;
    this.channels.forEach((c, i) => {
      const stage = new Sequential(new BasicBlock(prev, c, i === 0 ? 1 : 2), new BasicBlock(c, c, 1));
      this.layers.push(this.registerModule(`layer${i + 1}`, stage));
      prev = c;
    });
    // He init for convs (torchvision's choice for ResNet).
    for (const [name, p] of this.namedParameters()) {
      if (name.endsWith('weight') && p.ndim === 4) init.fill(p, init.kaimingNormal(p.shape, 'fan_out'));
    }
  }

  get outChannels(): number {
    return this.channels[3];
  }

  forward(x: Tensor): Tensor {
    return this.forwardFeatures(x).at(-1) as Tensor;
  }

  /** Outputs of layer1..layer4 (strides 4, 8, 16, 32). */
  forwardFeatures(x: Tensor): Tensor[] {
    return this.forwardStages(x).slice(1);
  }

  /** The stem's activation before max pooling (stride 2), then layer1..layer4 (strides 4, 8, 16, 32). */
  forwardStages(x: Tensor): Tensor[] {
    const [conv, bn, relu, pool] = this.stem.layers;
    let y = relu.forward(bn.forward(conv.forward(x)));
    const stages = [y];
    y = pool.forward(y);
    for (const l of this.layers) {
      y = l.forward(y);
      stages.push(y);
    }
    return stages;
  }
}
