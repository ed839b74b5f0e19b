/** `anoseg fuse`: one ensemble model file from trained models (e.g. AnoSeg + PaDiM) on scales set by training data. */
import path from 'node:path';
import { buildEnsemble, type EnsembleMemberSpec } from '../../methods/ensemble/build.js';
import { loadPredictor } from '../../methods/load.js';
import {
  custom,
  integer,
  invalid,
  parseCommand,
  text,
  texts,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';

const DEFAULTS = { seed: 0 } as const;

/** "1,0.5": one finite weight >= 0 per model. */
function weightList(s: string, name: string): number[] {
  const values = s.split(',').map((v) => Number(v.trim()));
  if (values.length === 0 || values.some((v) => !(Number.isFinite(v) && v >= 0)) || s.trim() === '') {
    throw invalid(name, s, 'comma-separated numbers >= 0, one per --model');
  }
  return values;
}

export const FUSE = {
  name: 'fuse',
  summary: 'combine trained models (e.g. AnoSeg + PaDiM) into one ensemble model file',
  about: `Writes one model file whose map and image score are weighted sums of the members' maps and scores, each
standardised by its mean and standard deviation on the held-out good training images of DIR (the 10% every trainer
keeps out). Thresholds are chosen on those images and synthetic anomalies made from them. The file embeds the
members and works with predict, eval and serve like any model file.`,
  options: {
    model: texts('MODEL', 'a trained model file; repeat for each member (at least two)', { required: true }),
    data: text('DIR', 'the training data the members were trained on', { required: true }),
    out: text('FILE', 'ensemble model file to write', { default: 'ensemble.safetensors next to the first model' }),
    'map-weights': custom('W,W,...', "each member's weight in the map", weightList, {
      default: 'all 1',
      synopsis: true,
    }),
    'score-weights': custom('W,W,...', "each member's weight in the image score", weightList, {
      default: 'all 1',
      synopsis: true,
    }),
    seed: integer('N', 'seed of the synthetic validation anomalies', { min: 0 }, { default: DEFAULTS.seed }),
  },
} satisfies CommandSpec<Options>;

export interface FuseInvocation {
  members: EnsembleMemberSpec[];
  data: string;
  out: string;
  seed: number;
}

/** `anoseg fuse ARGS` resolved without reading anything. */
export function resolveFuse(args: string[]): FuseInvocation {
  const { values: v } = parseCommand(FUSE, args);
  const models = v.model as string[];
  if (models.length < 2) throw invalid('model', models.join(' '), 'at least two models (repeat --model)');
  const weights = (given: number[] | undefined, name: string): number[] => {
    if (given === undefined) return models.map(() => 1);
    if (given.length !== models.length)
      throw invalid(name, given.join(','), `${models.length} weights, one per --model`);
    return given;
  };
  const mapWeights = weights(v['map-weights'], 'map-weights');
  const scoreWeights = weights(v['score-weights'], 'score-weights');
  return {
    members: models.map((file, k) => ({ file, mapWeight: mapWeights[k], scoreWeight: scoreWeights[k] })),
    data: v.data as string,
    out: v.out ?? path.join(path.dirname(models[0]), 'ensemble.safetensors'),
    seed: v.seed ?? DEFAULTS.seed,
  };
}

async function run(args: string[]): Promise<void> {
  const o = resolveFuse(args);
  const r = await buildEnsemble({ ...o, loadModel: loadPredictor });
  for (const m of r.meta.members) {
    process.stdout.write(
      `${m.method}: map x${m.mapWeight}, score x${m.scoreWeight}; normal pixels ${m.pixelMean.toPrecision(4)} ` +
        `+- ${m.pixelStd.toPrecision(4)}, normal scores ${m.imageMean.toPrecision(4)} +- ${m.imageStd.toPrecision(4)}\n`,
    );
  }
  process.stdout.write(
    `model: ${r.modelPath}\n${r.validationImages} ${r.heldOut ? 'held-out' : 'good (too few to hold any out)'} images; ` +
      `synthetic validation image AUROC ` +
      `${r.validationImageAuroc.toFixed(3)}, pixel AUROC ${r.validationPixelAuroc.toFixed(3)}\n`,
  );
}

export const fuseCommand: Command = { spec: FUSE, run };
