/**
 * From network outputs to anomaly scores. Convention everywhere outside the network: higher = more anomalous.
 */
import { Tensor, F, tidy } from '../engine/index.js';
import { gaussianKernel1d } from './gaussian.js';

/** The border blurMaps pads with: reflect needs the radius below both sides, else the edge is replicated. */
export function blurBorder(radius: number, height: number, width: number): 'reflect' | 'replicate' {
  return radius < height && radius < width ? 'reflect' : 'replicate';
}

/** Separable Gaussian blur of [N, 1, H, W] with reflect padding (sigma 0 = identity copy). */
export function blurMaps(maps: Tensor, sigma: number): Tensor {
  if (sigma <= 0) return maps.clone();
  return tidy(() => {
    // the same kernel as the evaluation's and PaDiM's blur (scipy's radius)
    const k = Float32Array.from(gaussianKernel1d(sigma));
    const r = (k.length - 1) / 2;
    const [, , h, w] = maps.shape;
    const mode = blurBorder(r, h, w);
    const kh = Tensor.from(k, [1, 1, k.length, 1]);
    const kw = Tensor.from(k, [1, 1, 1, k.length]);
    const v = F.conv2d(maps.pad([0, 0, r, r], mode), kh);
    return F.conv2d(v.pad([r, r, 0, 0], mode), kw);
  });
}

/** What the image score is the smoothed maximum of: the map alone, or the pixel score (map + reconstruction error). */
export const IMAGE_SCORE_SOURCES = ['map', 'map+reconstruction'] as const;
export type ImageScoreSource = (typeof IMAGE_SCORE_SOURCES)[number];

export interface ScoreOptions {
  /** Gaussian sigma (pixels) for the image score's smoothing. */
  sigma: number;
  /** Weight of the blurred reconstruction error in the pixel score (0 = map only). */
  reconstructionWeight: number;
  /** The image score's source (absent: 'map+reconstruction', as every model file before 2026-12-07 scored). */
  imageScore?: ImageScoreSource;
  /** Gaussian sigma (pixels at model resolution) the reconstruction error is blurred with (absent: 2; 0 = none). */
  reconstructionBlur?: number;
}

/** The reconstruction error's blur of model files and configs that do not name one. */
export const DEFAULT_RECONSTRUCTION_BLUR = 2;

/** The sigma the reconstruction error is blurred with under these settings (the default where they name none). */
export function reconstructionBlurOf(o: ScoreOptions): number {
  return o.reconstructionBlur ?? DEFAULT_RECONSTRUCTION_BLUR;
}

/**
 * The two parts of the pixel score: 1 - normal map [N,1,H,W], and the reconstruction error (mean over channels),
 * blurred with sigma `blur` (or null without a reconstruction).
 */
export function scoreParts(
  images: Tensor,
  normalMap: Tensor,
  reconstruction: Tensor | null,
  blur: number,
): { anomaly: Tensor; error: Tensor | null } {
  return tidy(() => ({
    anomaly: normalMap.rsub(1),
    error: reconstruction ? blurMaps(images.sub(reconstruction).abs().mean(1, true), blur) : null,
  }));
}

/**
 * Pixel anomaly maps [N,1,H,W] = (1 - normal map) + w * blur_s(mean over channels |x - x̂|), and image scores =
 * max of the Gaussian-smoothed pixel map (or of the smoothed 1 - normal map, imageScore 'map').
 */
export function anomalyScores(
  images: Tensor,
  normalMap: Tensor,
  reconstruction: Tensor | null,
  o: ScoreOptions,
): { maps: Tensor; imageScores: Float32Array } {
  return tidy(() => {
    const withError = o.reconstructionWeight > 0 && reconstruction !== null;
    const { anomaly, error } = scoreParts(
      images,
      normalMap,
      withError ? reconstruction : null,
      reconstructionBlurOf(o),
    );
    const maps = error ? anomaly.add(error, o.reconstructionWeight) : anomaly;
    const smoothed = blurMaps(o.imageScore === 'map' ? anomaly : maps, o.sigma);
    const imageScores = smoothed.amax([1, 2, 3]).toFloat32Array();
    return { maps, imageScores };
  });
}
