import { describe, expect, it } from 'vitest';
import { studyTable, type StudyRow } from './study.js';

const row = (dataset: string, variant = 'recipe'): StudyRow => ({
  variant,
  dataset,
  pixelAuroc: 0.9512,
  imageAuroc: 0.9,
  bestIou: 0.5,
  aupro: 0.8,
  trainMinutes: 15.04,
  steps: 1500,
});

describe('studyTable', () => {
  it('puts the paper reported bottle figures after the last bottle row and marks held-out sets', () => {
    const lines = studyTable([row('bottle', 'cpu'), row('bottle'), row('magnetic_tile')], ['magnetic_tile']).split(
      '\n',
    );
    expect(lines).toHaveLength(2 + 4);
    expect(lines[2]).toBe('| cpu | bottle | 0.951 | 0.900 | 0.500 | 0.800 | 15.0 | 1500 |');
    expect(lines[4]).toBe('| paper (reported, GPU) | bottle | 0.990 | 0.980 | - | - | - | - |');
    expect(lines[5]).toContain('| magnetic_tile (held out) |');
    expect(studyTable([row('kolektorsdd')])).not.toContain('paper');
  });
});
