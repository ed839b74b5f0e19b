// Collective communication (c10d: TCPStore + ProcessGroupGloo) for the addon; see distributed.cc.
#pragma once

#include <napi.h>

#include <ATen/core/Tensor.h>

namespace anoseg_native {

// How the binding gets the at::Tensor behind a JS tensor handle (throws a JS error for a disposed one).
using TensorFromValue = at::Tensor& (*)(const Napi::Value&);

// Adds `ProcessGroup` to the addon's exports.
void registerDistributed(Napi::Env env, Napi::Object exports, TensorFromValue tensorFromValue);

}  // namespace anoseg_native
