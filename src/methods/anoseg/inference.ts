/**
 * The inference form of an AnoSeg generator, built once at load from its trained modules with the folding of
 * src/nn/fused.ts (BatchNorm folded into convolutions, transposed convolutions as sub-pixel convolutions, oneDNN on
 * channels-last activations, no autograd). Outputs equal the generator's eval-mode outputs up to float rounding
 * (tests compare them).
 */
import { Tensor, noGrad } from '../../engine/index.js';
import { Conv2d } from '../../nn/index.js';
import { FusedConv, FusedResNet, foldBlock, type Step } from '../../nn/fused.js';
import { withCoordinates, type AnoSegGenerator, type Decoder, type GeneratorOutput } from './network.js';

export { inferenceSettings, type ConvKernel } from '../../nn/fused.js';

class FusedDecoder {
  private constructor(
    private readonly steps: Step[],
    private readonly head: FusedConv,
    private readonly skipCount: number,
  ) {}

  static fold(d: Decoder): FusedDecoder {
    const l = d.body.layers;
    if (l.length !== 12 || !(l[11] instanceof Conv2d)) throw new Error('FusedDecoder: unexpected decoder layout');
    return new FusedDecoder(l.slice(0, 11).map(foldBlock), FusedConv.fold(l[11], null, false), d.skipChannels.length);
  }

  forward(z: Tensor, skips: readonly Tensor[] = []): Tensor {
    if (skips.length !== this.skipCount) throw new Error(`FusedDecoder: ${skips.length} skips for ${this.skipCount}`);
    let y = this.steps[0].forward(z);
    for (let i = 0; i < 5; i++) {
      const up = this.steps[1 + 2 * i].forward(y);
      y = i < skips.length ? Tensor.cat([up, skips[i]], 1) : up;
      y = this.steps[2 + 2 * i].forward(y);
    }
    return this.head.forward(y).sigmoid();
  }

  dispose(): void {
    for (const s of this.steps) s.dispose();
    this.head.dispose();
  }
}

/**
 * The folded generator. `forward` returns what AnoSegGenerator.forward returns in eval mode; with `mapOnly` the
 * reconstruction decoder is not run (null), for callers whose score does not use it.
 */
export class InferenceGenerator {
  private constructor(
    readonly arch: AnoSegGenerator['arch'],
    private readonly encoder: FusedResNet,
    private readonly mapDecoder: FusedDecoder,
    private readonly reconstructionDecoder: FusedDecoder | null,
  ) {}

  static fromGenerator(g: AnoSegGenerator): InferenceGenerator {
    return new InferenceGenerator(
      g.arch,
      FusedResNet.fold(g.encoder),
      FusedDecoder.fold(g.mapDecoder),
      g.reconstructionDecoder ? FusedDecoder.fold(g.reconstructionDecoder) : null,
    );
  }

  forward(x: Tensor, o: { mapOnly?: boolean } = {}): GeneratorOutput {
    return noGrad(() => {
      const withCoords = this.arch.coordChannels ? withCoordinates(x) : x;
      const input = withCoords.contiguous('channels_last');
      const stages = this.encoder.forwardStages(input);
      const z = stages[4];
      const skips = this.arch.skips ? [stages[3], stages[2], stages[1], stages[0], input] : [];
      const map = this.mapDecoder.forward(z, skips);
      const reconstruction = o.mapOnly ? null : (this.reconstructionDecoder?.forward(z) ?? null);
      return { map, reconstruction };
    });
  }

  dispose(): void {
    this.encoder.dispose();
    this.mapDecoder.dispose();
    this.reconstructionDecoder?.dispose();
  }
}
