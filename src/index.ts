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
export { AnoSegGenerator, Discriminator, PAPER_ARCHITECTURE, type AnoSegArchitecture } from './models/anoseg.js';
export { AnoSegPredictor, loadAnoSegModel } from './models/anoseg-model.js';
export { loadPredictor, modelFileKind } from './models/load.js';
export type { AnomalyPredictor, AnomalyPrediction, ModelInfo } from './models/predictor.js';
export { trainAnoSeg, type TrainRunOptions, type TrainResult } from './train/anoseg-trainer.js';
export { presetConfig, PRESETS, DEFAULT_PRESET, type AnoSegTrainConfig } from './train/config.js';
export { evaluateMaps, folderMapProvider, formatMetricsTable, formatEvaluationSummary } from './eval/evaluate.js';
export { PixelMetricsAccumulator, auroc, averagePrecision, imageConfusion } from './eval/metrics.js';
export { createInspectionServer } from './service/server.js';
export { modelMapProvider } from './eval/model-maps.js';
export { PadimPredictor } from './models/padim.js';
export { DetectorPredictor } from './models/detector.js';
export { trainPadim } from './train/padim-trainer.js';
export { PatchcoreModel, PatchcorePredictor, fitPatchcoreBank, PATCHCORE_FORMAT } from './models/patchcore.js';
export { greedyCoreset, nearestDistances } from './models/patchcore-coreset.js';
export {
  trainPatchcore,
  resolvePatchcoreOptions,
  PATCHCORE_TRAIN_DEFAULTS,
  type PatchcoreTrainOptions,
  type PatchcoreTrainResult,
} from './train/patchcore-trainer.js';
export { pretrainBackbone } from './train/pretrain.js';
export { trainDetector } from './train/detector-trainer.js';
export { runAblation } from './train/ablation.js';
export { runStudy } from './train/study.js';
export { exportModelFile, exportAnoSeg, exportPadim, emitLayer, type OnnxExport } from './onnx/export.js';
export { exportAndCheck } from './onnx/export-checked.js';
export { checkInputs, compareScorers, type ExportCheck } from './onnx/check.js';
export { ONNX_MODEL_FORMAT, readOnnxModelFile, type OnnxModelFile } from './onnx/model-file.js';
// OnnxPredictor itself loads onnxruntime-node: reach it through loadPredictor or the 'anoseg-ts/onnx' entry point
export type { OnnxPredictor } from './onnx/predictor.js';
