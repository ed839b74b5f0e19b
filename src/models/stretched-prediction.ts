/**
 * The libtorch half of predictFitted: a chunk of equally sized images stretched to the model input, scored and the
 * maps stretched back, as tensors (kept apart from fitted-prediction.ts, which ONNX deployments load without
 * libtorch).
 */
import { F, noGrad, tidy, type Tensor } from '../engine/index.js';
import type { Image } from '../image/types.js';
import { toChannels, type ModelInput, type UniformChunkPredictor } from './fitted-prediction.js';
import { imagesToTensor, tensorToImages } from './image-tensor.js';
import type { AnomalyPrediction } from './predictor.js';

/**
 * A model's scoring of a fitted batch as tensors: [N, C, res, res] in, maps [N, 1, res, res] (owned by the caller's
 * tidy scope) and image scores out.
 */
export type TensorScorer = (x: Tensor) => { maps: Tensor; scores: Float32Array };

/**
 * predictFitted's uniform-chunk path for a tensor scorer: the images stacked, stretched to the model input and the
 * maps back to the images' size by libtorch's bilinear resampling (half-pixel centres, no antialiasing: what
 * fitImage / unfitMap do image by image in JavaScript), batched and multi-threaded.
 */
export function stretchedChunkPredictor(input: ModelInput, score: TensorScorer): UniformChunkPredictor {
  return (chunk: readonly Image[]): AnomalyPrediction[] => {
    const { height, width } = chunk[0];
    const res = input.resolution;
    const same = height === res && width === res;
    return noGrad(() =>
      tidy(() => {
        const raw = imagesToTensor(chunk.map((img) => toChannels(img, input.channels)));
        const { maps, scores } = score(same ? raw : F.interpolate(raw, [res, res]));
        const back = same ? maps : F.interpolate(maps, [height, width]);
        return tensorToImages(back).map((map, i) => ({ score: scores[i], map }));
      }),
    );
  };
}
