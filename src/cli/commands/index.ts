/** Every command of the `anoseg` CLI, in the order `anoseg --help` lists them. */
import type { Command } from '../options.js';
import { ablationCommand } from './ablation.js';
import { demoCommand } from './demo.js';
import { evalCommand } from './eval.js';
import { exportCommand } from './export.js';
import { fuseCommand } from './fuse.js';
import { launchCommand } from './launch.js';
import { padimCommand } from './padim.js';
import { patchcoreCommand } from './patchcore.js';
import { predictCommand } from './predict.js';
import { pretrainCommand } from './pretrain.js';
import { serveCommand } from './serve.js';
import { studyCommand } from './study.js';
import { formulaSynthCommand, synthCommand } from './synth.js';
import { trainDetectorCommand } from './train-detector.js';
import { trainCommand } from './train.js';

export const COMMANDS: readonly Command[] = [
  trainCommand,
  trainDetectorCommand,
  ablationCommand,
  predictCommand,
  evalCommand,
  synthCommand,
  formulaSynthCommand,
  serveCommand,
  exportCommand,
  fuseCommand,
  pretrainCommand,
  padimCommand,
  patchcoreCommand,
  studyCommand,
  demoCommand,
  launchCommand,
];
