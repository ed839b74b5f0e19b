/**
 * Export plus check in one step (the `anoseg export` command and `anoseg serve`'s in-browser mode): the graph is
 * run by onnxruntime-node next to the libtorch predictor on seeded inputs before anyone gets the bytes.
 */
import { MAP_TOLERANCE, checkInputs, compareScorers, exportCheckPassed, type ExportCheck } from './check.js';
import { exportModelFile, type OnnxExport } from './export.js';
import type { ModelInfo } from '../models/predictor.js';
import { OnnxPredictor } from './predictor.js';

export interface CheckedExport {
  onnx: OnnxExport;
  info: ModelInfo;
  check: ExportCheck;
  /** Maps within MAP_TOLERANCE (scaled by the map's magnitude where it exceeds 1) and every verdict the same. */
  passed: boolean;
}

export async function exportAndCheck(file: string, inputs = 4, seed = 0): Promise<CheckedExport> {
  const { onnx, reference } = await exportModelFile(file);
  try {
    const exported = await OnnxPredictor.fromBytes(onnx.bytes, `${file} (exported)`);
    try {
      const check = await compareScorers(reference, exported, checkInputs(reference.info, inputs, seed));
      // PaDiM maps are distances in the hundreds: float32 agrees to ~1e-6 relative there, not 1e-4 absolute
      const passed = exportCheckPassed(check, MAP_TOLERANCE * Math.max(1, check.mapScale));
      return { onnx, info: reference.info, check, passed };
    } finally {
      exported.dispose();
    }
  } finally {
    reference.dispose();
  }
}
