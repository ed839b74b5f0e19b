/**
 * AnoSeg's ResNet-18 encoder initialised from a formula-pretrained backbone file (the poster's point: pre-trained
 * features instead of random weights; issue 13's lever). A backbone file holds the stem and layer1..layer3 of a
 * ResNet-18 trained on 3-channel inputs normalised as (x - mean) / std; AnoSeg's encoder reads raw [0, 1] images
 * plus its coordinate channels. So:
 * - the stem convolution's image channels get the backbone's weights divided by std (a grayscale model sums them:
 *   its image is the RGB one with equal channels), the coordinate channels start at zero (the pretrained features
 *   are unchanged at the start and the coordinates enter as training finds them useful);
 * - the stem BatchNorm's running mean absorbs the dropped mean shift (conv(x / std) = conv((x - mean) / std) +
 *   conv(mean / std), a constant per output channel away from the zero-padded border);
 * - layer1..layer3 are copied as they are; layer4 keeps its random initialisation.
 */
import { Tensor, noGrad, tidy } from '../../engine/index.js';
import type { ResNet18 } from '../../nn/index.js';
import { FeatureBackbone } from '../../models/backbone.js';

const STEM_CONV = 'stem.0.weight';
const STEM_BN_MEAN = 'stem.1.running_mean';

/**
 * Reads the backbone file of `--encoder-init` and checks it against the model's width, so a wrong file is refused
 * before a run starts (initialiseEncoder checks the channels again for callers that built the backbone themselves).
 */
export async function loadEncoderBackbone(file: string, width: number): Promise<FeatureBackbone> {
  const backbone = await FeatureBackbone.load(file);
  if (backbone.meta.width !== width) {
    backbone.dispose();
    throw new Error(
      `--encoder-init ${file}: the backbone has width ${backbone.meta.width}, the model ${width}; pre-train one with ` +
        `'anoseg pretrain --width ${width}'`,
    );
  }
  return backbone;
}

/**
 * Copies `backbone` into `encoder` (see the module comment). `imageChannels` (1 or 3) are the encoder's first input
 * channels; any further ones are coordinates. Returns the number of tensors written. Throws, naming `where`, when
 * the widths differ.
 */
export function initialiseEncoder(
  encoder: ResNet18,
  backbone: FeatureBackbone,
  imageChannels: number,
  where = 'encoder init',
): number {
  const target = encoder.stateDict();
  const source = backbone.stateDict();
  const [c0, c1, c2] = encoder.channels;
  const [b1, b2, b3] = backbone.featureChannels;
  if (c0 !== b1 || c1 !== b2 || c2 !== b3) {
    throw new Error(
      `${where}: the backbone has width ${backbone.meta.width} (layer1-3: ${b1}-${b2}-${b3} channels), the model ` +
        `${c0}-${c1}-${c2}; pre-train one with 'anoseg pretrain --width' equal to the model's width`,
    );
  }
  if (imageChannels !== 1 && imageChannels !== 3)
    throw new Error(`${where}: 1 or 3 image channels, got ${imageChannels}`);
  return noGrad(() => tidy(() => copyInto(target, source, backbone, imageChannels, where)));
}

function copyInto(
  target: Map<string, Tensor>,
  source: Map<string, Tensor>,
  backbone: FeatureBackbone,
  imageChannels: number,
  where: string,
): number {
  let written = 0;
  for (const [name, value] of source) {
    if (name === STEM_CONV || name === STEM_BN_MEAN) continue;
    const t = target.get(name);
    if (!t) throw new Error(`${where}: the encoder has no tensor '${name}'`);
    if (t.shape.join() !== value.shape.join())
      throw new Error(`${where}: '${name}' is [${value.shape}] in the backbone, [${t.shape}] in the encoder`);
    t.copy_(value);
    written++;
  }
  const { mean, std } = backbone.meta;
  const w = source.get(STEM_CONV)!;
  const stem = target.get(STEM_CONV)!;
  const [out, inputs, kh, kw] = stem.shape;
  const k = kh * kw;
  const src = w.toFloat32Array();
  const dst = new Float32Array(out * inputs * k);
  const shift = new Float32Array(out);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < 3; c++) {
      for (let j = 0; j < k; j++) {
        const v = src[(o * 3 + c) * k + j] / std[c];
        dst[(o * inputs + (imageChannels === 3 ? c : 0)) * k + j] += v;
        shift[o] += v * mean[c];
      }
    }
  }
  stem.copy_(Tensor.from(dst, stem.shape));
  const runningMean = source.get(STEM_BN_MEAN)!.toFloat32Array();
  target.get(STEM_BN_MEAN)!.copy_(
    Tensor.from(
      runningMean.map((m, o) => m + shift[o]),
      [out],
    ),
  );
  return written + 2;
}
