// Tells binding.gyp where libtorch lives. Default: Debian's libtorch-dev. Set LIBTORCH to the root of
// another libtorch (e.g. an unpacked CUDA build with include/ and lib/) to build against it instead.
const fs = require('node:fs');
const path = require('node:path');

const root = process.env.LIBTORCH;
let include, lib;
if (root) {
  include = [path.join(root, 'include'), path.join(root, 'include/torch/csrc/api/include')];
  lib = path.join(root, 'lib');
} else {
  include = ['/usr/include', '/usr/include/torch/csrc/api/include'];
  lib = '/usr/lib/x86_64-linux-gnu';
}
const what = process.argv[2];
if (what === 'include') {
  process.stdout.write(include.join(' '));
} else if (what === 'libdir') {
  process.stdout.write(lib);
} else if (what === 'libs') {
  const libs = ['-ltorch', '-ltorch_cpu', '-lc10'];
  // CUDA builds of libtorch split the GPU kernels into their own libraries.
  for (const extra of ['torch_cuda', 'c10_cuda']) {
    if (fs.existsSync(path.join(lib, `lib${extra}.so`))) libs.push(`-l${extra}`);
  }
  process.stdout.write(libs.join(' '));
} else {
  process.stderr.write('usage: torch-paths.cjs include|libdir|libs\n');
  process.exit(2);
}
