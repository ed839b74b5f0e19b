/**
 * OnnxPredictor: an exported model (anoseg export) run by ONNX Runtime for Node, no libtorch involved. The
 * graph scores inputs already fitted to the model (export.ts); fitting and mapping back are the project's own
 * (predictFittedAsync), driven by the file's metadata, so predictions match the libtorch predictors.
 */
import { promises as fs } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { stackImages, type Image } from '../image/types.js';
import { predictFittedAsync } from '../models/fitted-prediction.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo } from '../models/predictor.js';
import { ONNX_INPUT, ONNX_MAP_OUTPUT, ONNX_SCORE_OUTPUT, readOnnxModelFile, type OnnxModelFile } from './model-file.js';

/** Threads of the session: ANOSEG_THREADS when set (as for libtorch), else ONNX Runtime's default (all cores). */
function sessionOptions(): ort.InferenceSession.SessionOptions {
  const threads = Number(process.env.ANOSEG_THREADS);
  return Number.isInteger(threads) && threads > 0 ? { intraOpNumThreads: threads, interOpNumThreads: 1 } : {};
}

export class OnnxPredictor implements AnomalyPredictor {
  readonly info: ModelInfo;

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly file: OnnxModelFile,
    private readonly maxBatch = 8,
  ) {
    this.info = file.info;
  }

  static async load(path: string): Promise<OnnxPredictor> {
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(path);
    } catch (e) {
      throw new Error(`cannot open model ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return OnnxPredictor.fromBytes(bytes, path);
  }

  /** A predictor for model bytes held in memory; `name` appears in errors. */
  static async fromBytes(bytes: Uint8Array, name: string): Promise<OnnxPredictor> {
    const file = readOnnxModelFile(bytes, name);
    if (
      file.inputName !== ONNX_INPUT ||
      ![ONNX_MAP_OUTPUT, ONNX_SCORE_OUTPUT].every((o) => file.outputNames.includes(o))
    ) {
      throw new Error(
        `${name}: ONNX graph has input '${file.inputName}' and outputs ${file.outputNames.join(', ')}; expected ` +
          `'${ONNX_INPUT}' -> '${ONNX_MAP_OUTPUT}', '${ONNX_SCORE_OUTPUT}'`,
      );
    }
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, sessionOptions());
    } catch (e) {
      throw new Error(`${name}: ONNX Runtime cannot load the model: ${(e as Error).message}`);
    }
    return new OnnxPredictor(session, file);
  }

  /** Anomaly maps at model resolution and image scores for inputs already fitted to the model. */
  async scoreFitted(inputs: readonly Image[]): Promise<{ maps: Image[]; scores: Float32Array }> {
    const { resolution: r, channels: c } = this.info;
    const { data, shape } = stackImages(inputs);
    if (shape[1] !== c || shape[2] !== r || shape[3] !== r) {
      throw new Error(`OnnxPredictor: inputs are ${shape[1]}x${shape[2]}x${shape[3]}, expected ${c}x${r}x${r}`);
    }
    const out = await this.session.run({ [ONNX_INPUT]: new ort.Tensor('float32', data, shape) });
    const mapData = out[ONNX_MAP_OUTPUT].data as Float32Array;
    const scores = Float32Array.from(out[ONNX_SCORE_OUTPUT].data as Float32Array);
    const maps = inputs.map((_, i) => ({
      channels: 1,
      height: r,
      width: r,
      data: mapData.slice(i * r * r, (i + 1) * r * r),
    }));
    return { maps, scores };
  }

  async predict(images: Image[]): Promise<AnomalyPrediction[]> {
    const { channels, resolution } = this.info;
    const { aspect, tiling } = this.file.info;
    return predictFittedAsync(images, { channels, resolution, aspect, tiling }, this.maxBatch, (x) =>
      this.scoreFitted(x),
    );
  }

  dispose(): void {
    // release() is asynchronous; a failure to free has nobody to report to and must not crash the process
    this.session.release().catch(() => undefined);
  }
}
