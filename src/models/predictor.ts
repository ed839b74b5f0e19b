import type { Image } from '../image/types.js';

/**
 * The output contract every detector in the project honours (AnoSeg, AnoSeg + detector, PaDiM):
 * an image-level score and a pixel anomaly map where HIGHER = MORE ANOMALOUS.
 * (AnoSeg's network itself outputs a normal-region map, 1 = normal; predictors convert with 1 - map.)
 */
export interface AnomalyPrediction {
  /** Image-level anomaly score; compare with ModelInfo.threshold. */
  score: number;
  /** 1-channel anomaly-score map at the size of the input image. */
  map: Image;
}

export interface ModelInfo {
  /** 'anoseg' | 'anoseg+detector' | 'padim' */
  method: string;
  /** Square model input resolution in pixels. */
  resolution: number;
  /** Image channels the model was trained on (1 or 3); inputs are converted to it. */
  channels: number;
  /** How inputs of another aspect ratio are fitted to the square input (stretch, pad or crop), where known. */
  aspect?: string;
  /** Whether elongated inputs are split into near-square tiles ('long-side', src/image/tiles.ts) or not ('none'). */
  tiling?: string;
  /** Image-score threshold (score >= threshold => defective), chosen on validation data at training time. */
  imageThreshold: number;
  /** Pixel threshold on the anomaly map used to draw the defect mask. */
  pixelThreshold: number;
  /** Free-form training facts (dataset, preset, steps, date) for the model-info endpoint. */
  meta: Record<string, string | number | boolean>;
}

export interface PredictOptions {
  /**
   * Abandons the prediction when aborted: a PredictorPool rejects at once and terminates the worker running it.
   * Predictors that run on the caller's thread cannot be interrupted and may ignore it.
   */
  signal?: AbortSignal;
}

export interface AnomalyPredictor {
  readonly info: ModelInfo;
  /** Runs the model on a batch; images of any size and 1/3/4 channels. */
  predict(images: Image[], options?: PredictOptions): Promise<AnomalyPrediction[]>;
  /** Frees native memory held by the model. */
  dispose(): void;
}
