/**
 * Library API of AnoSeg.ts. Every CLI command has its equivalent here.
 */
export * as engine from './engine/index.js';
export * as nn from './nn/index.js';
export type { Image } from './image/types.js';
export {
  loadImage,
  decodeImage,
  saveImagePng,
  saveMap16,
  saveMapTiff,
  fitImage,
  unfitMap,
  resizeImage,
} from './image/io.js';
export { heatmap, overlay, hstack, maskOutline } from './image/visual.js';
export {
  openMvtecDataset,
  openFolderDataset,
  openTrainingData,
  detectLayout,
  groundTruthCounts,
  openImageFolder,
  loadImages,
} from './data/dataset.js';
export { generateSyntheticDataset } from './data/synthetic-dataset.js';
export {
  makeSyntheticAnomaly,
  paperAnomalyOptions,
  writeSynthSamples,
  type AnomalyOptions,
} from './synth/anomalies.js';
export { formulaStream, sampleFormulaDefect, writeFormulaSamples } from './synth/formula.js';
export {
  AnoSegGenerator,
  Discriminator,
  PAPER_ARCHITECTURE,
  type AnoSegArchitecture,
} from './methods/anoseg/network.js';
export { AnoSegPredictor, loadAnoSegModel } from './methods/anoseg/model-file.js';
export { loadPredictor, modelFileKind } from './methods/load.js';
export type { AnomalyPredictor, AnomalyPrediction, ModelInfo } from './models/predictor.js';
export { trainAnoSeg, type TrainRunOptions, type TrainResult } from './methods/anoseg/trainer.js';
export { presetConfig, PRESETS, DEFAULT_PRESET, type AnoSegTrainConfig } from './methods/anoseg/config.js';
export { evaluateMaps, folderMapProvider, formatMetricsTable, formatEvaluationSummary } from './eval/evaluate.js';
export { PixelMetricsAccumulator, auroc, averagePrecision, imageConfusion } from './eval/metrics.js';
export { createInspectionServer } from './service/server.js';
export { modelMapProvider } from './eval/model-maps.js';
export { PadimPredictor } from './methods/padim/model.js';
export { DetectorPredictor } from './methods/detector/model.js';
export { trainPadim } from './methods/padim/trainer.js';
export { PatchcoreModel, PatchcorePredictor, fitPatchcoreBank, PATCHCORE_FORMAT } from './methods/patchcore/model.js';
export { greedyCoreset, nearestDistances } from './methods/patchcore/coreset.js';
export {
  trainPatchcore,
  resolvePatchcoreOptions,
  PATCHCORE_TRAIN_DEFAULTS,
  type PatchcoreTrainOptions,
  type PatchcoreTrainResult,
} from './methods/patchcore/trainer.js';
export { pretrainBackbone } from './methods/pretrain/trainer.js';
export { trainDetector } from './methods/detector/trainer.js';
export { runAblation } from './experiments/ablation.js';
export { runStudy } from './experiments/study.js';
export { exportModelFile, exportAnoSeg, exportPadim, emitLayer, type OnnxExport } from './onnx/export.js';
export { exportAndCheck } from './onnx/export-checked.js';
export { checkInputs, compareScorers, type ExportCheck } from './onnx/check.js';
export { ONNX_MODEL_FORMAT, readOnnxModelFile, type OnnxModelFile } from './onnx/model-file.js';
// OnnxPredictor itself loads onnxruntime-node: reach it through loadPredictor or the 'anoseg-ts/onnx' entry point
export type { OnnxPredictor } from './onnx/predictor.js';
