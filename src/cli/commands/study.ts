/** `anoseg study`: presets on several data sets with one budget, tabulated. */
import path from 'node:path';
import { PRESETS } from '../../methods/anoseg/config.js';
import {
  UsageError,
  choice,
  choiceList,
  integer,
  nameList,
  number,
  parseCommand,
  text,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';

const SHARED_DATASETS = ['mvtec/bottle', 'kolektorsdd', 'magnetic_tile'];
const DEFAULTS = { presets: ['paper', 'recipe'], minutes: 15, out: path.join('runs', 'study') } as const;

export const STUDY = {
  name: 'study',
  summary: 'train presets on several data sets with one budget and tabulate the metrics',
  about: `Trains each preset on each data set with the same wall-clock budget, evaluates each on its test split and
writes study.md (pixel AUROC, image AUROC, best IoU, AUPRO, training minutes; the paper's reported figures
beside bottle); a preset trained with its PaDiM ensemble (the recipe, by default) gets a second row for the fused
model, whose minutes include the PaDiM fit. Each run's eval/report.html has its strips (image | map | ground truth). Finished runs are kept and
not repeated; one made under another budget or from another configuration of its preset (the preset changed since) is
refused, naming the settings that differ.`,
  options: {
    data: nameList('DIR,DIR,...', 'the data sets (MVTec-layout categories)', {
      default: `${SHARED_DATASETS.join(', ')} under ../shared/datasets`,
      synopsis: true,
    }),
    presets: choiceList(Object.keys(PRESETS), 'the presets to train', {
      default: DEFAULTS.presets.join(','),
      synopsis: true,
    }),
    minutes: number('M', 'training budget per run', { above: 0 }, { default: DEFAULTS.minutes, synopsis: true }),
    steps: integer(
      'N',
      'a fixed step count per run: the learning-rate schedule runs over N steps and --minutes is only a cap, so the ' +
        "figures do not depend on the machine's load (deterministic with ANOSEG_THREADS=1; the README's quality " +
        "table is --steps 12000 --minutes 400); default: the preset's own steps, the budget in minutes decides",
      { min: 1 },
      { synopsis: true },
    ),
    out: text('DIR', 'study folder', { default: DEFAULTS.out, synopsis: true }),
    ensemble: choice(
      ['padim', 'none'],
      "'padim': also fit PaDiM beside each AnoSeg model and tabulate the fused model ('<preset> + PaDiM'), as anoseg " +
        "train does; 'none': AnoSeg alone",
      { default: 'padim for the recipe preset, none for the others' },
    ),
    'held-out': nameList('NAME,...', 'the data sets (folder names) that no choice of the recipe looked at', {
      synopsis: true,
    }),
  },
} satisfies CommandSpec<Options>;

export interface StudyInvocation {
  datasets: string[];
  presets: string[];
  minutes: number;
  steps?: number;
  out: string;
  heldOut: string[];
  ensemble?: 'padim' | 'none';
}

/** `anoseg study ARGS` resolved without running anything. */
export function resolveStudy(args: string[]): StudyInvocation {
  const { values: v } = parseCommand(STUDY, args);
  const shared = path.resolve('..', 'shared', 'datasets');
  const datasets = v.data ?? SHARED_DATASETS.map((d) => path.join(shared, d));
  const heldOut = v['held-out'] ?? [];
  const names = datasets.map((d) => path.basename(path.resolve(d)));
  const unknown = heldOut.filter((h) => !names.includes(h));
  if (unknown.length)
    throw new UsageError(
      `--held-out names no data set of this study: ${unknown.join(', ')} (data sets: ${names.join(', ')})`,
    );
  return {
    datasets,
    presets: v.presets ?? [...DEFAULTS.presets],
    minutes: v.minutes ?? DEFAULTS.minutes,
    steps: v.steps,
    out: v.out ?? DEFAULTS.out,
    heldOut,
    ensemble: v.ensemble,
  };
}

async function run(args: string[]): Promise<void> {
  const o = resolveStudy(args);
  const { runStudy, presetVariants, studyTable } = await import('../../experiments/study.js');
  const rows = await runStudy({
    datasets: o.datasets,
    variants: presetVariants(o.presets, o.ensemble),
    minutes: o.minutes,
    steps: o.steps,
    out: o.out,
    heldOut: o.heldOut,
  });
  process.stdout.write(`${studyTable(rows, o.heldOut)}\n\ntable: ${path.join(o.out, 'study.md')}\n`);
}

export const studyCommand: Command = { spec: STUDY, run };
