import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, getNumThreads, manualSeed, noGrad, setNumThreads, tidy } from '../engine/index.js';
import type { Image } from '../image/types.js';
import type { Tiling } from '../image/tiles.js';
import { Sequential, Conv2d, Tanh } from '../nn/index.js';
import onnxProto from 'onnx-proto';
import { decodeImage, encodePng } from '../image/io.js';
import { createInspectionServer } from '../service/server.js';
import { Rng } from '../util/rng.js';
import { AnoSegGenerator, type AnoSegArchitecture } from '../methods/anoseg/network.js';
import { saveAnoSegModel, scoreBatch, type AnoSegModelMeta } from '../methods/anoseg/model-file.js';
import { FeatureBackbone } from '../models/backbone.js';
import { PADIM_SIGMA, PadimModel, fitPadimStats } from '../methods/padim/model.js';
import { loadPredictor } from '../methods/load.js';
import {
  AnomalyDetector,
  DetectorPredictor,
  detectorArchitectureFor,
  saveDetectorModel,
  variantSwitches,
  type DetectorModelMeta,
} from '../methods/detector/model.js';
import { checkInputs, compareScorers, MAP_TOLERANCE } from './check.js';
import { emitLayer, exportModelFile } from './export.js';
import { GraphBuilder } from './graph.js';
import { ONNX_MODEL_FORMAT, readOnnxModelFile } from './model-file.js';
import { OnnxPredictor } from './predictor.js';
import { tinyArchitecture } from '../../test/fixtures/tiny-architecture.js';

let dir: string;
const threadsBefore = getNumThreads();

beforeAll(async () => {
  setNumThreads(1);
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-onnx-'));
});

afterAll(async () => {
  setNumThreads(threadsBefore);
  await rm(dir, { recursive: true, force: true });
});

/** A threshold between the middle two scores, so the verdicts of the check inputs are mixed. */
function middleThreshold(scores: ArrayLike<number>): number {
  const s = Array.from(scores).sort((a, b) => a - b);
  return (s[1] + s[2]) / 2;
}

function smoothImage(rng: Rng, channels: number, height: number, width: number): Image {
  const data = new Float32Array(channels * height * width);
  const fx = rng.uniform(1, 4);
  const fy = rng.uniform(1, 4);
  for (let c = 0; c < channels; c++)
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++)
        data[(c * height + y) * width + x] =
          0.5 + 0.3 * Math.sin((fx * x) / width + c) * Math.cos((fy * y) / height) + rng.normal(0, 0.03);
  return { channels, height, width, data };
}

async function anosegModel(
  name: string,
  arch: AnoSegArchitecture,
  score: AnoSegModelMeta['score'],
  tiling: Tiling = 'none',
): Promise<string> {
  manualSeed(7);
  const generator = new AnoSegGenerator(arch);
  // BatchNorm running statistics away from their initial values, so the export must carry them
  noGrad(() =>
    tidy(() =>
      [0, 1].forEach(() => generator.forward(Tensor.rand([2, arch.channels, arch.resolution, arch.resolution]).mul(2))),
    ),
  );
  generator.eval();
  const info = { channels: arch.channels, resolution: arch.resolution };
  const { scores } = scoreBatch(generator, checkInputs({ ...info } as never, 4, 1), score);
  const file = path.join(dir, `${name}.safetensors`);
  await saveAnoSegModel(file, generator, {
    arch,
    aspect: 'pad',
    tiling,
    score,
    imageThreshold: middleThreshold(scores),
    pixelThreshold: 0.5,
    facts: { test: name },
  });
  generator.dispose();
  return file;
}

async function padimModel(name: string, resolution: number, channels: 1 | 3): Promise<string> {
  const rng = new Rng(3);
  const train = Array.from({ length: 6 }, () => smoothImage(rng, channels, resolution, resolution));
  const backbone = FeatureBackbone.random(0.125, 4);
  const stats = fitPadimStats(backbone, train, { dims: 24, seed: 2 });
  const meta = {
    resolution,
    aspect: 'crop' as const,
    channels,
    dims: stats.dims,
    seed: 2,
    eps: 0.01,
    sigma: PADIM_SIGMA,
    backbone: backbone.meta,
    imageThreshold: 0,
    pixelThreshold: 1,
    facts: { test: name },
  };
  const probe = new PadimModel(backbone, stats, meta);
  meta.imageThreshold = middleThreshold(probe.scoreFitted(checkInputs({ channels, resolution } as never, 4, 1)).scores);
  const file = path.join(dir, `${name}.safetensors`);
  await new PadimModel(backbone, stats, meta).save(file);
  probe.dispose();
  return file;
}

/** AnoSeg + the eq. 5 detector (map input, coordinates), its BatchNorm statistics moved off their initial values. */
async function detectorModel(name: string): Promise<string> {
  manualSeed(9);
  const arch = tinyArchitecture();
  const anoseg = new AnoSegGenerator(arch);
  const detector = new AnomalyDetector(detectorArchitectureFor(arch, true));
  noGrad(() =>
    tidy(() => {
      const x = Tensor.rand([2, 3, 32, 32]);
      detector.scoreBatch(x, anoseg.forward(x).map, { alpha: 1, beta: 0.1 });
    }),
  );
  anoseg.eval();
  detector.eval();
  const meta: DetectorModelMeta = {
    anoseg: {
      arch,
      aspect: 'stretch',
      score: { sigma: 4, reconstructionWeight: 0 },
      imageThreshold: 0.5,
      pixelThreshold: 0.5,
      facts: {},
    },
    detector: {
      arch: detector.arch,
      variant: 'full',
      switches: variantSwitches('full'),
      score: { alpha: 1, beta: 0.1 },
      imageThreshold: 0,
    },
    facts: { test: name },
  };
  const probe = new DetectorPredictor(anoseg, detector, meta);
  meta.detector.imageThreshold = middleThreshold(probe.scoreFitted(checkInputs(probe.info, 4, 1)).scores);
  const file = path.join(dir, `${name}.safetensors`);
  await saveDetectorModel(file, anoseg, detector, meta);
  probe.dispose();
  return file;
}

const CASES: { name: string; make: () => Promise<string> }[] = [
  {
    name: 'AnoSeg 32 px gray, skips, transposed upsampling, reconstruction in the score',
    make: () =>
      anosegModel('anoseg32', tinyArchitecture({ channels: 1, skips: true }), { sigma: 2, reconstructionWeight: 0.5 }),
  },
  {
    // the recipe's score: the error in the map unblurred, the image score of the map alone
    name: 'AnoSeg 32 px RGB, skips, unblurred reconstruction error in the map, image score from the map alone',
    make: () =>
      anosegModel('anoseg32-map-score', tinyArchitecture({ skips: true }), {
        sigma: 2,
        reconstructionWeight: 3.5,
        imageScore: 'map',
        reconstructionBlur: 0,
      }),
  },
  {
    // the 45 x 70 and 80 x 50 images of the prediction check below are 2 tiles each
    name: 'AnoSeg 32 px RGB, long-side tiles',
    make: () =>
      anosegModel(
        'anoseg32-tiles',
        tinyArchitecture({ skips: true }),
        { sigma: 2, reconstructionWeight: 1 },
        'long-side',
      ),
  },
  {
    name: 'AnoSeg 64 px RGB, resize upsampling, map only',
    make: () =>
      anosegModel(
        'anoseg64',
        tinyArchitecture({ resolution: 64, coordChannels: false, upsampling: 'resize', skips: false }),
        { sigma: 4, reconstructionWeight: 0 },
      ),
  },
  {
    name: 'AnoSeg + detector (eq. 5 score: discriminator features, LeakyReLU) 32 px RGB',
    make: () => detectorModel('detector32'),
  },
  { name: 'PaDiM 32 px gray', make: () => padimModel('padim32', 32, 1) },
  { name: 'PaDiM 64 px RGB', make: () => padimModel('padim64', 64, 3) },
];

describe('ONNX export round trip (onnxruntime-node vs the libtorch predictor)', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const source = await c.make();
      const { onnx, reference } = await exportModelFile(source);
      const onnxFile = source.replace(/\.safetensors$/, '.onnx');
      await writeFile(onnxFile, onnx.bytes);
      const predictor = await loadPredictor(onnxFile);
      try {
        expect(predictor).toBeInstanceOf(OnnxPredictor);
        expect(predictor.info).toEqual({ ...reference.info, aspect: reference.info.aspect });
        const check = await compareScorers(reference, predictor as OnnxPredictor, checkInputs(reference.info, 4, 1));
        expect(check.maxMapDiff).toBeLessThanOrEqual(MAP_TOLERANCE);
        expect(check.maxScoreDiff).toBeLessThanOrEqual(MAP_TOLERANCE);
        expect(check.verdictMismatches).toBe(0);
        // the whole prediction path: an image of another size and channel count, fitted and mapped back
        const rng = new Rng(11);
        const images = [smoothImage(rng, 3, 45, 70), smoothImage(rng, 1, 80, 50)];
        const [want, got] = [await reference.predict(images), await predictor.predict(images)];
        want.forEach((w, i) => {
          expect([got[i].map.height, got[i].map.width]).toEqual([w.map.height, w.map.width]);
          let diff = 0;
          w.map.data.forEach((v, j) => (diff = Math.max(diff, Math.abs(v - got[i].map.data[j]))));
          expect(diff).toBeLessThanOrEqual(MAP_TOLERANCE);
          expect(got[i].score >= predictor.info.imageThreshold).toBe(w.score >= reference.info.imageThreshold);
        });
      } finally {
        predictor.dispose();
        reference.dispose();
      }
    });
  }
});

// These read the .onnx files the round-trip tests above wrote (tests in a file run in order).
describe('ONNX files and bad input', () => {
  it('records format, thresholds, preprocessing and score in the metadata', async () => {
    const file = path.join(dir, 'anoseg32.onnx');
    const meta = readOnnxModelFile(await readFile(file), file);
    expect(meta.metadata['anoseg.format']).toBe(ONNX_MODEL_FORMAT);
    expect(meta.sourceFormat).toBe('anoseg.ts/anoseg@1');
    expect(meta.opset).toBe(17);
    expect(meta.info).toMatchObject({
      method: 'anoseg',
      resolution: 32,
      channels: 1,
      aspect: 'pad',
      pixelThreshold: 0.5,
    });
    expect(JSON.parse(meta.metadata['anoseg.preprocessing'])).toMatchObject({
      channels: 1,
      resolution: 32,
      aspect: 'pad',
    });
    expect(JSON.parse(meta.metadata['anoseg.score'])).toMatchObject({ sigma: 2, reconstructionWeight: 0.5 });
  });

  it('records the tiling in the model info and the preprocessing, and refuses one it does not know', async () => {
    const file = path.join(dir, 'anoseg32-tiles.onnx');
    const bytes = await readFile(file);
    const meta = readOnnxModelFile(bytes, file);
    expect(meta.info.tiling).toBe('long-side');
    expect(JSON.parse(meta.metadata['anoseg.preprocessing'])).toMatchObject({ tiling: 'long-side' });
    expect(readOnnxModelFile(await readFile(path.join(dir, 'anoseg64.onnx')), 'x').info.tiling).toBe('none');
    const model = onnxProto.onnx.ModelProto.decode(bytes);
    const info = model.metadataProps.find((p) => p.key === 'anoseg.info')!;
    info.value = JSON.stringify({ ...JSON.parse(info.value!), tiling: 'grid' });
    const odd = path.join(dir, 'odd-tiling.onnx');
    await writeFile(odd, onnxProto.onnx.ModelProto.encode(model).finish());
    await expect(loadPredictor(odd)).rejects.toThrow(
      /odd-tiling\.onnx: ONNX metadata 'anoseg\.info' has tiling 'grid'/,
    );
  });

  it('refuses a layer it cannot write, naming it', () => {
    const net = new Sequential(new Conv2d(1, 2, 3), new Tanh()).eval();
    const g = new GraphBuilder();
    expect(() => emitLayer(g, net, g.input('image'), 'head')).toThrow(
      /cannot export 'head\.1' \(Tanh\): the ONNX exporter writes Sequential, Conv2d, .*BasicBlock only/,
    );
    net.dispose();
  });

  it('refuses a truncated ONNX file, wherever it was cut', async () => {
    const bytes = await readFile(path.join(dir, 'padim32.onnx'));
    const cut = path.join(dir, 'cut.onnx');
    for (const fraction of [0.1, 0.5, 0.999]) {
      await writeFile(cut, bytes.subarray(0, Math.floor(bytes.length * fraction)));
      await expect(loadPredictor(cut)).rejects.toThrow(
        /cut\.onnx: truncated or corrupt ONNX file \(\d+ bytes; protobuf/,
      );
    }
    // cut right after the graph: protobuf reads a whole model, without the metadata
    const model = onnxProto.onnx.ModelProto.decode(bytes);
    model.metadataProps = [];
    await writeFile(cut, onnxProto.onnx.ModelProto.encode(model).finish());
    await expect(loadPredictor(cut)).rejects.toThrow(
      /cut\.onnx: ONNX model without the anoseg\.ts metadata .*cut short/,
    );
  });

  it('serves inspections through onnxruntime-node (anoseg serve --model model.onnx)', async () => {
    const predictor = await loadPredictor(path.join(dir, 'anoseg64.onnx'));
    const svc = createInspectionServer({ predictor });
    try {
      const url = await svc.listen(0);
      const image = { channels: 3, height: 40, width: 50, data: new Float32Array(3 * 40 * 50).fill(0.4) };
      const png = await encodePng(image);
      const r = await fetch(`${url}/api/inspect`, {
        method: 'POST',
        headers: { 'Content-Type': 'image/png' },
        body: new Uint8Array(png),
      });
      expect(r.status).toBe(200);
      const body = (await r.json()) as { score: number; width: number };
      const [direct] = await predictor.predict([await decodeImage(png)]);
      expect(body.width).toBe(50);
      expect(body.score).toBeCloseTo(direct.score, 6);
    } finally {
      await svc.close();
      predictor.dispose();
    }
  });

  it('refuses a file of another kind, saying what it looks like', async () => {
    const png = path.join(dir, 'image.png');
    await writeFile(png, Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]));
    await expect(loadPredictor(png)).rejects.toThrow(/image\.png: not a model file: .*it is a PNG image/);
    await expect(exportModelFile(path.join(dir, 'padim32.onnx'))).rejects.toThrow(
      /padim32\.onnx is an ONNX model already/,
    );
  });
});
