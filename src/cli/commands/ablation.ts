/** `anoseg ablation`: the paper's ablation (Table 3 or Table 5) at CPU size. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { TABLE5_VARIANTS } from '../../methods/detector/model.js';
import { ABLATION_PRESET, TABLE3_PAPER, runAblation, type AblationOptions } from '../../experiments/ablation.js';
import { presetConfig } from '../../methods/anoseg/config.js';
import {
  choice,
  custom,
  integer,
  invalid,
  nameList,
  number,
  parseCommand,
  section,
  text,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';

const PRESET = presetConfig(ABLATION_PRESET);
const TABLE3_RUNS = Object.keys(TABLE3_PAPER);
const DEFAULTS = { minutes: 10, evalSize: 256 } as const;

export const ABLATION = {
  name: 'ablation',
  summary: "reproduce the paper's ablation (Table 3 or Table 5) at CPU size",
  about: `Reproduces the paper's ablation at CPU size ('${ABLATION_PRESET}' preset), every run with the same time budget, and writes
ablation.md (with the paper's figures alongside) and ablation.json. Table 3: base (CutPaste only), + hard
augmentation, + adversarial learning, + coordinate channels, evaluated on pixel AUROC, IoU, image AUROC, AUPRO.
Table 5: the detector variants on top of one AnoSeg model, evaluated on image AUROC of eq. 5. Finished runs are reused.`,
  options: {
    data: text('DIR', 'MVTec-layout category with a labelled test split', { required: true }),
    table: choice(['3', '5'], 'which table', { required: true }),
    out: text('DIR', 'study folder', { default: 'runs/ablation/table<N>-<data name>' }),
    minutes: number('M', 'training budget per run', { above: 0 }, { default: DEFAULTS.minutes }),
    seeds: custom('N,N,...', 'train every run once per seed; each row is the mean', seedList, { default: '0' }),
    steps: integer('N', 'step cap per run', {}, { default: PRESET.steps }),
    runs: nameList(
      'a,b',
      `only these runs (table 3: ${TABLE3_RUNS.join(',')}; table 5: ${TABLE5_VARIANTS.join(',')})`,
      { default: 'all' },
    ),
    anoseg: text('MODEL', 'table 5: build on this AnoSeg model', {
      default: 'train the full Table 3 configuration in OUT/anoseg',
    }),
    'adv-weight': number(
      'W',
      'table 3: weight of L_Adv in the adversarial rows',
      { above: 0 },
      {
        default: PRESET.loss.adversarialWeight,
      },
    ),
    'eval-size': integer(
      'PX',
      "evaluation size (as in the paper; 0 = each mask's own size)",
      { min: 0 },
      {
        default: DEFAULTS.evalSize,
      },
    ),
    ...section('Overrides of the preset (quick studies):', {
      resolution: integer('PX', 'input size', { min: 32, powerOfTwo: true }, { default: PRESET.arch.resolution }),
      width: number('W', 'channel multiplier', { above: 0, max: 4 }, { default: PRESET.arch.width }),
      batch: integer('N', 'images per step', { min: 2 }, { default: PRESET.batchSize }),
    }),
  },
} satisfies CommandSpec<Options>;

/** Distinct non-negative integers, comma-separated. */
function seedList(s: string, name: string): number[] {
  const seeds = s.split(',').map((x) => x.trim());
  if (seeds.some((x) => !/^\d+$/.test(x)) || new Set(seeds.map(Number)).size !== seeds.length)
    throw invalid(name, s, 'distinct non-negative integers, comma-separated');
  return seeds.map(Number);
}

/** `anoseg ablation ARGS` resolved without running anything. */
export function resolveAblation(args: string[]): AblationOptions {
  const { values: v } = parseCommand(ABLATION, args);
  const data = v.data as string;
  const table = Number(v.table) as 3 | 5;
  const known: readonly string[] = table === 3 ? TABLE3_RUNS : TABLE5_VARIANTS;
  const unknown = (v.runs ?? []).filter((r) => !known.includes(r));
  if (unknown.length) throw invalid('runs', unknown.join(','), `table ${table} runs: ${known.join(', ')}`);
  const evalSize = v['eval-size'] ?? DEFAULTS.evalSize;
  return {
    data,
    out: v.out ?? path.join('runs', 'ablation', `table${table}-${path.basename(path.resolve(data))}`),
    table,
    minutesPerRun: v.minutes ?? DEFAULTS.minutes,
    seeds: v.seeds ?? [0],
    steps: v.steps,
    runs: v.runs,
    anosegModel: v.anoseg,
    adversarialWeight: v['adv-weight'],
    evalSize: evalSize === 0 ? null : evalSize,
    resolution: v.resolution,
    width: v.width,
    batchSize: v.batch,
  };
}

async function run(args: string[]): Promise<void> {
  const r = await runAblation(resolveAblation(args));
  process.stdout.write(
    `${await fs.readFile(r.files.markdown, 'utf8')}\ntable: ${r.files.markdown}\ndata:  ${r.files.json}\n`,
  );
}

export const ablationCommand: Command = { spec: ABLATION, run };
