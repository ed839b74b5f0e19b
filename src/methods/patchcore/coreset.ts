/**
 * The two numerical kernels of PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
 * CVPR 2022), on libtorch tensors:
 *
 *  - greedyCoreset: the paper's greedy k-center coreset selection (Algorithm 1, iterative farthest-point
 *    sampling). Starting from a seeded random point, each step adds the point whose distance to the points chosen so
 *    far is largest, then lowers every point's distance-to-coreset by its distance to the new point. Distances are
 *    measured after a seeded Johnson-Lindenstrauss projection to `projectionDims` (default 128) dimensions, as in
 *    the paper (features of up to 128 dims are used as they are). The plain step is one matrix-vector product over
 *    all points (||p||^2 - 2 p.c + ||c||^2, squared distances: same order as distances) plus an elementwise minimum
 *    and an argmax: O(N * projectionDims) per step, O(N * count * projectionDims) in all. The default pruned step
 *    gives the same selection but visits only the clusters (points grouped by their nearest chosen point) that the
 *    new point can be nearest for (triangle inequality), gathering their rows; late in a selection that is a few
 *    percent of the points.
 *  - nearestDistances: the L2 distance of every query row to its nearest bank row, in matrix form
 *    (||a||^2 - 2 a.b + ||b||^2, clamped at 0, square root) over chunks of the bank, so the [queries, bank] distance
 *    matrix is never held whole.
 */
import { Tensor, keep, noGrad, op, releaseDeferred, tidy } from '../../engine/index.js';
import { Rng } from '../../util/rng.js';

/** Dimensions of the random projection the coreset distances are measured in (the paper's 128). */
export const PATCHCORE_PROJECTION_DIMS = 128;

/** Elements of one chunk of the query x bank distance matrix (4 MiB of float32). */
export const NN_CHUNK_ELEMENTS = 1 << 20;

/** Squared distances below this fraction of the largest squared norm count as 0 (float32 rounding). */
const DUPLICATE_TOLERANCE = 1e-6;

/**
 * A Johnson-Lindenstrauss projection matrix [inputDims, outDims] (row-major) with entries N(0, 1 / outDims), so
 * squared lengths are preserved in expectation. Drawn from rng (JavaScript numbers: the same on every machine).
 */
export function jlProjection(inputDims: number, outDims: number, rng: Rng): Float32Array {
  for (const [name, v] of [
    ['inputDims', inputDims],
    ['outDims', outDims],
  ] as const) {
    if (!(Number.isInteger(v) && v >= 1)) throw new Error(`jlProjection: ${name} must be an integer >= 1, got ${v}`);
  }
  const m = new Float32Array(inputDims * outDims);
  const std = 1 / Math.sqrt(outDims);
  for (let i = 0; i < m.length; i++) m[i] = rng.normal(0, std);
  return m;
}

export interface CoresetOptions {
  /** Seed of the projection and of the starting point (default 0). */
  seed?: number;
  /** Projection dims (default 128); features with at most this many dims, or 0, use exact distances. */
  projectionDims?: number;
  /** Called every `progressEvery` selections and at the end. */
  onProgress?: (done: number, total: number) => void;
  progressEvery?: number;
  /** Skip the clusters a new point cannot change (default true; false: the plain update of every point). */
  prune?: boolean;
}

/** The seeded choices of a coreset run: the projection (null: raw features) and the starting point. */
export interface CoresetPlan {
  projection: Float32Array | null;
  projectionDims: number;
  start: number;
}

/** What greedyCoreset draws from its seed, for `points` rows of `dims` features (exposed for reference tests). */
export function coresetPlan(points: number, dims: number, o: CoresetOptions = {}): CoresetPlan {
  const k = o.projectionDims ?? PATCHCORE_PROJECTION_DIMS;
  if (!(Number.isInteger(k) && k >= 0)) throw new Error(`coreset: projectionDims must be an integer >= 0, got ${k}`);
  if (!(Number.isInteger(points) && points >= 1)) throw new Error(`coreset: needs at least 1 point, got ${points}`);
  const rng = new Rng(o.seed ?? 0);
  const project = k > 0 && k < dims;
  const projection = project ? jlProjection(dims, k, rng) : null;
  return { projection, projectionDims: project ? k : dims, start: rng.int(0, points - 1) };
}

/** Number of bank rows for `patches` training patches: ceil(ratio * patches), at least 1, at most maxBank. */
export function coresetSize(patches: number, ratio: number, maxBank: number): number {
  if (!(ratio > 0 && ratio <= 1)) throw new Error(`coreset ratio must be in (0, 1], got ${ratio}`);
  if (!(Number.isInteger(maxBank) && maxBank >= 1)) throw new Error(`maxBank must be an integer >= 1, got ${maxBank}`);
  return Math.max(1, Math.min(patches, maxBank, Math.ceil(ratio * patches)));
}

/**
 * Greedy k-center coreset of the rows of `features` [N, D] (float32): `count` row indices in the order chosen, the
 * seeded random start first. count >= N returns every row (0..N-1); fewer than count come back when every point
 * already coincides with a chosen one (squared distance within 1e-6 of the largest squared norm: the rest would be
 * duplicates). Yields to the event loop now and then (so the finalisers of released tensor wrappers run during long
 * selections).
 *
 * With `prune` (the default) a step only recomputes the points whose distance can change: every point belongs to its
 * nearest chosen point's cluster, and a cluster whose centre a is at least twice its radius r_a away from the new
 * point c is skipped whole (triangle inequality: d(p, c) >= d(a, c) - d(p, a) >= 2 r_a - r_a >= d(p, a)). The
 * selection is the same as without pruning (up to float rounding in near ties), the work per step falls from all N
 * points to the clusters near c once the coreset grows.
 */
export async function greedyCoreset(features: Tensor, count: number, o: CoresetOptions = {}): Promise<Int32Array> {
  if (features.ndim !== 2) throw new Error(`greedyCoreset: features must be [N, D], got [${features.shape}]`);
  const [n, d] = features.shape;
  if (!(Number.isInteger(count) && count >= 1)) throw new Error(`greedyCoreset: count must be >= 1, got ${count}`);
  if (count >= n) {
    o.onProgress?.(n, n);
    return Int32Array.from({ length: n }, (_, i) => i);
  }
  const plan = coresetPlan(n, d, o);
  const every = Math.max(1, o.progressEvery ?? 256);
  // points [N, k], their squared norms [N] (kept in JS too: ||c||^2 of each chosen point is a number)
  const { points, norms } = noGrad(() =>
    tidy(() => {
      const x = features.dtype === 'float32' ? features : features.to('float32');
      const p = plan.projection
        ? x.matmul(Tensor.from(plan.projection, [d, plan.projectionDims])).contiguous()
        : x.contiguous();
      return { points: p, norms: p.square().sum(1) };
    }),
  );
  keep(points);
  keep(norms);
  const normsJs = norms.toFloat32Array();
  let largestNorm = 0;
  for (const v of normsJs) largestNorm = Math.max(largestNorm, v);
  // squared distances this small are float rounding of the matrix form: such a point equals a chosen one
  const covered = DUPLICATE_TOLERANCE * largestNorm;
  const step = (o.prune ?? true) ? prunedSteps(points, norms, count) : plainSteps(points, norms);
  const selected = new Int32Array(count);
  try {
    let idx = plan.start;
    for (let k = 0; k < count; k++) {
      selected[k] = idx;
      if (k === count - 1) break;
      const [next, farthest] = noGrad(() => step.add(idx, k, normsJs[idx]));
      if (!(farthest > covered)) {
        // every point coincides with a chosen one: the rest would be duplicates
        o.onProgress?.(count, count);
        return selected.slice(0, k + 1);
      }
      idx = next;
      if ((k + 1) % every === 0) {
        o.onProgress?.(k + 1, count);
        await releaseDeferred();
      }
    }
    o.onProgress?.(count, count);
    return selected;
  } finally {
    step.dispose();
    points.dispose();
    norms.dispose();
  }
}

/**
 * One selection step: adds point `idx` (squared norm `norm`) as the k-th chosen point and returns the next one (the
 * farthest point from the chosen ones) with its squared distance to them.
 */
interface CoresetSteps {
  add(idx: number, k: number, norm: number): [number, number];
  dispose(): void;
}

/** Every step updates every point: one matrix-vector product over all N points. */
function plainSteps(points: Tensor, norms: Tensor): CoresetSteps {
  let minDistance: Tensor | null = null;
  return {
    add(c, _k, norm) {
      const previous: Tensor | null = minDistance;
      const next = tidy(() => {
        const center = points.slice(0, c, c + 1).reshape([-1]);
        // ||p||^2 - 2 p.c + ||c||^2 for every point p
        const dist = (op('aten::addmv', norms, points, center, 1, -2) as Tensor).add(norm);
        const m = previous ? previous.minimum(dist) : dist;
        m.slice(0, c, c + 1).fill_(0); // exactly 0 for the chosen point (the matrix form leaves rounding)
        return m;
      });
      previous?.dispose();
      minDistance = keep(next);
      return farthestPoint(next);
    },
    dispose() {
      (minDistance as Tensor | null)?.dispose();
    },
  };
}

/** Index and value of the largest entry of a [N] tensor. */
function farthestPoint(distance: Tensor): [number, number] {
  return tidy(() => {
    const [value, index] = op('aten::max.dim', distance, 0, false) as [Tensor, Tensor];
    return [index.item(), value.item()];
  });
}

/** Relative slack on the pruning test, so float rounding never skips a cluster that exact arithmetic would visit. */
const PRUNE_SLACK = 1e-3;
/** Above this fraction of the points to visit, a step computes every point's distance instead of gathering rows. */
const GATHER_FRACTION = 0.25;

/**
 * The largest value of each cluster: (cluster numbers, maxima), one entry per cluster present. A segment maximum by
 * two sorts (by value, then stably by cluster: each cluster's run starts with its largest value), as
 * scatter_reduce('amax') is a beta API in this libtorch and warns on stderr.
 */
export function clusterMaxima(cluster: Tensor, value: Tensor): [Tensor, Tensor] {
  return tidy(() => {
    const m = cluster.shape[0];
    if (m === 0) return [cluster, value];
    const [, byValue] = op('aten::sort', value, 0, true) as [Tensor, Tensor];
    const [sorted, perm] = op('aten::sort.stable', cluster.indexSelect(0, byValue), true, 0, false) as [Tensor, Tensor];
    const starts = Tensor.cat(
      [
        Tensor.ones([1], { dtype: 'bool' }),
        op('aten::ne.Tensor', sorted.slice(0, 1, m), sorted.slice(0, 0, m - 1)) as Tensor,
      ],
      0,
    );
    const first = (op('aten::nonzero', starts) as Tensor).reshape([-1]);
    return [sorted.indexSelect(0, first), value.indexSelect(0, byValue.indexSelect(0, perm.indexSelect(0, first)))];
  });
}

/** Steps that skip the clusters the new point cannot be nearest for (see greedyCoreset). */
function prunedSteps(points: Tensor, norms: Tensor, count: number): CoresetSteps {
  const [n, dims] = points.shape;
  const centers = keep(Tensor.zeros([count, dims]));
  const centerNorms = keep(Tensor.zeros([count]));
  /** Squared distance of each point to its nearest chosen point, and that point's number (its cluster). */
  const minDistance = keep(Tensor.full([n], Infinity));
  const cluster = keep(Tensor.zeros([n], { dtype: 'int64' }));
  /** Squared radius of each cluster (largest squared distance of a member to the cluster's point). */
  const radius = keep(Tensor.zeros([count]));
  return {
    add(c, k, norm) {
      return tidy(() => {
        const center = points.slice(0, c, c + 1);
        centers.slice(0, k, k + 1).copy_(center);
        centerNorms.slice(0, k, k + 1).fill_(norm);
        const cv = center.reshape([-1]);
        // the points of the clusters whose point a has d(a, c) < 2 r_a (all points for the first one)
        let members: Tensor | null = null;
        if (k > 0) {
          const toCenters = (
            op('aten::addmv', centerNorms.slice(0, 0, k), centers.slice(0, 0, k), cv, 1, -2) as Tensor
          ).add(norm);
          const near = toCenters.lt(
            radius
              .slice(0, 0, k)
              .mul(4 * (1 + PRUNE_SLACK))
              .add(1e-12),
          );
          members = (op('aten::nonzero', near.indexSelect(0, cluster)) as Tensor).reshape([-1]);
          // gathering most rows costs more than the product over all of them
          if (members.shape[0] > n * GATHER_FRACTION) members = null;
        }
        const pick = (t: Tensor): Tensor => (members ? t.indexSelect(0, members) : t);
        const dist = (op('aten::addmv', pick(norms), pick(points), cv, 1, -2) as Tensor).add(norm).clamp(0);
        const old = pick(minDistance);
        const oldCluster = pick(cluster);
        const closer = dist.lt(old);
        const newDistance = Tensor.where(closer, dist, old);
        const newCluster = op('aten::masked_fill.Scalar', oldCluster, closer, k) as Tensor;
        if (members) {
          op('aten::index_copy_', minDistance, 0, members, newDistance);
          op('aten::index_copy_', cluster, 0, members, newCluster);
        } else {
          minDistance.copy_(newDistance);
          cluster.copy_(newCluster);
        }
        minDistance.slice(0, c, c + 1).fill_(0);
        cluster.slice(0, c, c + 1).fill_(k);
        if (members) {
          // exact radii of the clusters touched (all their members were visited) and of the new one
          op('aten::index_fill_.int_Scalar', radius, 0, oldCluster, 0);
          const [clusters, largest] = clusterMaxima(newCluster, newDistance);
          op('aten::index_copy_', radius, 0, clusters, largest);
        } else {
          // the new cluster's radius; the others keep their old radius, an upper bound (members only leave or get
          // closer), until a step visits them (sorting all points every step would cost more than it saves)
          const own = Tensor.where(newCluster.eq(k), newDistance, Tensor.zeros([1])).amax();
          radius.slice(0, k, k + 1).copy_(own.reshape([1]));
        }
        return farthestPoint(minDistance);
      });
    },
    dispose() {
      for (const t of [centers, centerNorms, minDistance, cluster, radius]) t.dispose();
    },
  };
}

/**
 * Distance of every row of `queries` [Q, D] to its nearest row of `bank` [M, D]: a [Q] tensor (owned by the
 * enclosing tidy scope). `bankNorms` [M] are the bank's squared row norms (computed when not given). The distance
 * matrix is formed `maxElements` entries at a time.
 */
export function nearestDistances(
  queries: Tensor,
  bank: Tensor,
  bankNorms?: Tensor,
  maxElements = NN_CHUNK_ELEMENTS,
): Tensor {
  if (queries.ndim !== 2 || bank.ndim !== 2 || queries.shape[1] !== bank.shape[1]) {
    throw new Error(`nearestDistances: queries [${queries.shape}] and bank [${bank.shape}] must be [Q, D] and [M, D]`);
  }
  const [q] = queries.shape;
  const [m] = bank.shape;
  if (m < 1) throw new Error('nearestDistances: empty bank');
  const chunk = Math.max(1, Math.floor(maxElements / Math.max(1, q)));
  return noGrad(() =>
    tidy(() => {
      const b2 = bankNorms ?? bank.square().sum(1);
      let best = null as Tensor | null;
      for (let start = 0; start < m; start += chunk) {
        const end = Math.min(m, start + chunk);
        // ||b||^2 - 2 a.b for this bank chunk; ||a||^2 is the same along a row, added after the minimum
        const low = tidy(() =>
          (
            op(
              'aten::addmm',
              b2.slice(0, start, end),
              queries,
              bank.slice(0, start, end).transpose(0, 1),
              1,
              -2,
            ) as Tensor
          ).amin(1),
        );
        best = best ? best.minimum(low) : low;
      }
      return best!.add(queries.square().sum(1)).clamp(0).sqrt();
    }),
  );
}
