// Thin, generic N-API binding over libtorch.
//
// It knows tensors, the ATen operator registry, autograd and threads — nothing about any model.
// Every ATen operator is reachable through one boxed call: JS asks for an operator handle by name and
// overload, then calls it with positional arguments that are converted using the operator's own schema
// (defaults filled in). Autograd works because boxed calls go through the dispatcher's Autograd key.

#include <napi.h>

#include "distributed.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/version.h>

#include <map>
#include <mutex>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace {

struct AddonData {
  Napi::FunctionReference tensorCtor;
  Napi::FunctionReference objectCtor;
  std::vector<c10::OperatorHandle> ops;
  std::vector<std::string> opNames;
  // Bytes held by live tensor handles, and the part of it V8 has been told about (see accountExternal).
  int64_t liveBytes = 0;
  int64_t reportedBytes = 0;
};

// V8 starts a major GC whenever reported external memory rises 64 MB above its level at the last GC. Reporting
// every tensor as it is created made each training step (hundreds of MB of short-lived, explicitly disposed
// activations) trigger one, whose concurrent marking competed with the compute threads (~12% of a 128 px
// step). So V8 is told the live total when JS syncs between steps (syncExternalMemory, once per event-loop
// turn) and at once only when it drifts by more than this much; leaked handles still create GC pressure.
constexpr int64_t kUnreportedExternalLimit = int64_t(1) << 30;

void syncExternalMemory(Napi::Env env, AddonData* data) {
  const int64_t delta = data->liveBytes - data->reportedBytes;
  if (delta != 0) Napi::MemoryManagement::AdjustExternalMemory(env, delta);
  data->reportedBytes = data->liveBytes;
}

void accountExternal(Napi::Env env, int64_t delta) {
  auto* data = env.GetInstanceData<AddonData>();
  if (!data || delta == 0) return;
  data->liveBytes += delta;
  const int64_t drift = data->liveBytes - data->reportedBytes;
  if (drift > kUnreportedExternalLimit || drift < -kUnreportedExternalLimit) syncExternalMemory(env, data);
}

std::string errorText(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

// Runs fn, turning any C++ exception into a JS exception (an escaping c10::Error would abort Node).
template <typename Fn>
Napi::Value guarded(const Napi::Env& env, Fn&& fn) {
  try {
    return fn();
  } catch (const Napi::Error& e) {
    e.ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, errorText(e)).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "TensorHandle",
                       {
                           InstanceMethod("dispose", &TensorHandle::Dispose),
                           InstanceAccessor("disposed", &TensorHandle::Disposed, nullptr),
                           InstanceAccessor("shape", &TensorHandle::Shape, nullptr),
                           InstanceAccessor("dtype", &TensorHandle::Dtype, nullptr),
                           InstanceAccessor("device", &TensorHandle::DeviceName, nullptr),
                           InstanceAccessor("nbytes", &TensorHandle::Nbytes, nullptr),
                           InstanceAccessor("requiresGrad", &TensorHandle::RequiresGrad, &TensorHandle::SetRequiresGrad),
                           InstanceAccessor("isLeaf", &TensorHandle::IsLeaf, nullptr),
                           InstanceMethod("grad", &TensorHandle::Grad),
                           InstanceMethod("setGrad", &TensorHandle::SetGrad),
                           InstanceMethod("toArray", &TensorHandle::ToArray),
                           InstanceMethod("item", &TensorHandle::Item),
                           InstanceMethod("sameStorage", &TensorHandle::SameStorage),
                       });
  }

  TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      Napi::TypeError::New(info.Env(), "TensorHandle is created by the binding only").ThrowAsJavaScriptException();
      return;
    }
    tensor_ = *info[0].As<Napi::External<at::Tensor>>().Data();
    bytes_ = tensor_.defined() ? static_cast<int64_t>(tensor_.nbytes()) : 0;
    accountExternal(info.Env(), bytes_);
  }

  ~TensorHandle() override { release(Env()); }

  static Napi::Object Wrap(Napi::Env env, at::Tensor t) {
    auto* data = env.GetInstanceData<AddonData>();
    return data->tensorCtor.New({Napi::External<at::Tensor>::New(env, &t)});
  }

  static bool Is(Napi::Env env, const Napi::Value& v) {
    if (!v.IsObject()) return false;
    auto* data = env.GetInstanceData<AddonData>();
    return v.As<Napi::Object>().InstanceOf(data->tensorCtor.Value());
  }

  static at::Tensor& Get(const Napi::Value& v) {
    TensorHandle* h = Napi::ObjectWrap<TensorHandle>::Unwrap(v.As<Napi::Object>());
    if (!h->tensor_.defined()) throw Napi::Error::New(v.Env(), "tensor was disposed");
    return h->tensor_;
  }

 private:
  void release(Napi::Env env) {
    accountExternal(env, -bytes_);
    bytes_ = 0;
    tensor_ = at::Tensor();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !tensor_.defined()); }

  at::Tensor& live(const Napi::CallbackInfo& info) {
    if (!tensor_.defined()) throw Napi::Error::New(info.Env(), "tensor was disposed");
    return tensor_;
  }

  Napi::Value Shape(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto sizes = live(info).sizes();
      auto arr = Napi::Array::New(info.Env(), sizes.size());
      for (size_t i = 0; i < sizes.size(); i++) arr.Set(i, Napi::Number::New(info.Env(), (double)sizes[i]));
      return arr;
    });
  }
  Napi::Value Dtype(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      return Napi::String::New(info.Env(), c10::toString(live(info).scalar_type()));
    });
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), live(info).device().str()); });
  }
  Napi::Value Nbytes(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), (double)live(info).nbytes()); });
  }
  Napi::Value RequiresGrad(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Boolean::New(info.Env(), live(info).requires_grad()); });
  }
  void SetRequiresGrad(const Napi::CallbackInfo& info, const Napi::Value& value) {
    guarded(info.Env(), [&]() -> Napi::Value {
      live(info).requires_grad_(value.ToBoolean().Value());
      return info.Env().Undefined();
    });
  }
  Napi::Value IsLeaf(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Boolean::New(info.Env(), live(info).is_leaf()); });
  }
  // The accumulated gradient, or null before any backward reached this tensor.
  Napi::Value Grad(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      const at::Tensor& g = live(info).grad();
      if (!g.defined()) return info.Env().Null();
      return Wrap(info.Env(), g);
    });
  }
  // setGrad(null) clears the gradient (cheaper than zeroing); setGrad(t) replaces it.
  Napi::Value SetGrad(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      at::Tensor& t = live(info);
      if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
        t.mutable_grad() = at::Tensor();
      } else {
        t.mutable_grad() = Get(info[0]);
      }
      return info.Env().Undefined();
    });
  }
  Napi::Value SameStorage(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      return Napi::Boolean::New(info.Env(), live(info).is_same(Get(info[0])));
    });
  }

  // Copies the tensor's values into a fresh typed array (contiguous, CPU).
  Napi::Value ToArray(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      at::Tensor t = live(info).detach().to(at::kCPU).contiguous();
      const size_t n = t.numel();
      switch (t.scalar_type()) {
        case at::kFloat: {
          auto arr = Napi::Float32Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr<float>(), n * sizeof(float));
          return arr;
        }
        case at::kDouble: {
          auto arr = Napi::Float64Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr<double>(), n * sizeof(double));
          return arr;
        }
        case at::kInt: {
          auto arr = Napi::Int32Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr<int32_t>(), n * sizeof(int32_t));
          return arr;
        }
        case at::kLong: {
          auto arr = Napi::BigInt64Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr<int64_t>(), n * sizeof(int64_t));
          return arr;
        }
        case at::kChar: {
          auto arr = Napi::Int8Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr<int8_t>(), n);
          return arr;
        }
        case at::kByte:
        case at::kBool: {
          auto arr = Napi::Uint8Array::New(env, n);
          if (n) std::memcpy(arr.Data(), t.data_ptr(), n);
          return arr;
        }
        default: {
          at::Tensor f = t.to(at::kFloat);
          auto arr = Napi::Float32Array::New(env, n);
          if (n) std::memcpy(arr.Data(), f.data_ptr<float>(), n * sizeof(float));
          return arr;
        }
      }
    });
  }

  Napi::Value Item(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      at::Tensor& t = live(info);
      if (t.numel() != 1) throw Napi::Error::New(info.Env(), "item() needs a tensor with exactly one element");
      if (t.scalar_type() == at::kBool) return Napi::Boolean::New(info.Env(), t.item<bool>());
      return Napi::Number::New(info.Env(), t.item<double>());
    });
  }

  at::Tensor tensor_;
  int64_t bytes_ = 0;  // counted in AddonData::liveBytes
};

// An opaque operator value that is neither a tensor nor a plain value: a TorchScript custom-class object (e.g. the
// packed-weight context of a prepacked convolution). JS only passes it back to operators that take that class.
class ObjectHandle : public Napi::ObjectWrap<ObjectHandle> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "ObjectHandle",
                       {
                           InstanceMethod("dispose", &ObjectHandle::Dispose),
                           InstanceAccessor("disposed", &ObjectHandle::Disposed, nullptr),
                           InstanceAccessor("type", &ObjectHandle::TypeName, nullptr),
                       });
  }

  ObjectHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ObjectHandle>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      Napi::TypeError::New(info.Env(), "ObjectHandle is created by the binding only").ThrowAsJavaScriptException();
      return;
    }
    value_ = *info[0].As<Napi::External<c10::IValue>>().Data();
  }

  static Napi::Object Wrap(Napi::Env env, c10::IValue v) {
    auto* data = env.GetInstanceData<AddonData>();
    return data->objectCtor.New({Napi::External<c10::IValue>::New(env, &v)});
  }

  static bool Is(Napi::Env env, const Napi::Value& v) {
    if (!v.IsObject()) return false;
    auto* data = env.GetInstanceData<AddonData>();
    return v.As<Napi::Object>().InstanceOf(data->objectCtor.Value());
  }

  static const c10::IValue& Get(const Napi::Value& v) {
    ObjectHandle* h = Napi::ObjectWrap<ObjectHandle>::Unwrap(v.As<Napi::Object>());
    if (h->value_.isNone()) throw Napi::Error::New(v.Env(), "object was disposed");
    return h->value_;
  }

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    value_ = c10::IValue();
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), value_.isNone()); }
  Napi::Value TypeName(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), value_.type()->str()); });
  }

  c10::IValue value_;
};

at::ScalarType parseDtype(const std::string& s) {
  if (s == "float32" || s == "float") return at::kFloat;
  if (s == "float64" || s == "double") return at::kDouble;
  if (s == "float16" || s == "half") return at::kHalf;
  if (s == "bfloat16") return at::kBFloat16;
  if (s == "int32" || s == "int") return at::kInt;
  if (s == "int64" || s == "long") return at::kLong;
  if (s == "uint8") return at::kByte;
  if (s == "int8") return at::kChar;
  if (s == "bool") return at::kBool;
  throw std::invalid_argument("unknown dtype '" + s + "'");
}

int64_t parseEnumString(const std::string& s, c10::TypeKind kind) {
  if (kind == c10::TypeKind::MemoryFormatType || s == "contiguous_format" || s == "channels_last" ||
      s == "preserve_format") {
    if (s == "contiguous_format" || s == "contiguous") return (int64_t)at::MemoryFormat::Contiguous;
    if (s == "channels_last") return (int64_t)at::MemoryFormat::ChannelsLast;
    if (s == "preserve_format") return (int64_t)at::MemoryFormat::Preserve;
  }
  if (kind == c10::TypeKind::LayoutType || s == "strided") {
    if (s == "strided") return (int64_t)at::kStrided;
  }
  return (int64_t)parseDtype(s);
}

std::string describe(const Napi::Value& v) {
  if (v.IsNull()) return "null";
  if (v.IsUndefined()) return "undefined";
  if (v.IsNumber()) return "number";
  if (v.IsBoolean()) return "boolean";
  if (v.IsString()) return "string";
  if (v.IsArray()) return "array";
  return "object";
}

// Converts one JS value to the IValue an operator argument of type `type` expects.
c10::IValue toIValue(Napi::Env env, const Napi::Value& v, const c10::TypePtr& type, const std::string& where) {
  using K = c10::TypeKind;
  auto fail = [&](const std::string& expected) -> c10::IValue {
    throw std::invalid_argument(where + ": expected " + expected + ", got " + describe(v));
  };
  switch (type->kind()) {
    case K::OptionalType: {
      if (v.IsNull() || v.IsUndefined()) return c10::IValue();
      return toIValue(env, v, type->expectRef<c10::OptionalType>().getElementType(), where);
    }
    case K::TensorType:
      if (!TensorHandle::Is(env, v)) return fail("a Tensor");
      return TensorHandle::Get(v);
    case K::ClassType: {
      if (!ObjectHandle::Is(env, v)) return fail("an object of class " + type->str());
      const c10::IValue& obj = ObjectHandle::Get(v);
      if (!obj.type()->isSubtypeOf(*type)) return fail("an object of class " + type->str() + ", not " + obj.type()->str());
      return obj;
    }
    case K::IntType:
    case K::SymIntType:
    case K::ScalarTypeType:
    case K::LayoutType:
    case K::MemoryFormatType:
      if (v.IsString()) return parseEnumString(v.As<Napi::String>().Utf8Value(), type->kind());
      if (!v.IsNumber()) return fail("an integer");
      return (int64_t)v.As<Napi::Number>().Int64Value();
    case K::FloatType:
      if (!v.IsNumber()) return fail("a number");
      return v.As<Napi::Number>().DoubleValue();
    case K::BoolType:
      if (!v.IsBoolean()) return fail("a boolean");
      return v.As<Napi::Boolean>().Value();
    case K::NumberType:  // Scalar
      if (v.IsBoolean()) return c10::Scalar(v.As<Napi::Boolean>().Value());
      if (!v.IsNumber()) {
        return fail("a number");
      } else {
        // Integral values become integer Scalars so integer tensors stay integer (as with Python's 2 vs 2.0);
        // for floating tensors the two are equivalent.
        double d = v.As<Napi::Number>().DoubleValue();
        if (std::trunc(d) == d && std::fabs(d) < 9007199254740992.0) return c10::Scalar((int64_t)d);
        return c10::Scalar(d);
      }
    case K::StringType:
      if (!v.IsString()) return fail("a string");
      return v.As<Napi::String>().Utf8Value();
    case K::DeviceObjType:
      if (!v.IsString()) return fail("a device string");
      return c10::Device(v.As<Napi::String>().Utf8Value());
    case K::ListType: {
      const auto& elem = type->expectRef<c10::ListType>().getElementType();
      const auto ek = elem->kind();
      if (ek == K::IntType || ek == K::SymIntType) {
        c10::List<int64_t> out;
        if (v.IsNumber()) {  // `int[2] stride` given as a single int: PyTorch broadcasts it too
          out.push_back(v.As<Napi::Number>().Int64Value());
          return out;
        }
        if (!v.IsArray()) return fail("an array of integers");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) {
          Napi::Value e = arr.Get(i);
          if (!e.IsNumber()) return fail("an array of integers");
          out.push_back(e.As<Napi::Number>().Int64Value());
        }
        return out;
      }
      if (ek == K::FloatType) {
        c10::List<double> out;
        if (!v.IsArray()) return fail("an array of numbers");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) out.push_back(arr.Get(i).ToNumber().DoubleValue());
        return out;
      }
      if (ek == K::NumberType) {  // Scalar[] (e.g. the per-tensor factors of the _foreach_ operators)
        c10::impl::GenericList out(c10::NumberType::get());
        if (!v.IsArray()) return fail("an array of numbers");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) {
          Napi::Value e = arr.Get(i);
          if (!e.IsNumber()) return fail("an array of numbers");
          out.push_back(c10::Scalar(e.As<Napi::Number>().DoubleValue()));
        }
        return out;
      }
      if (ek == K::BoolType) {
        c10::List<bool> out;
        if (!v.IsArray()) return fail("an array of booleans");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) out.push_back(arr.Get(i).ToBoolean().Value());
        return out;
      }
      if (ek == K::TensorType) {
        c10::List<at::Tensor> out;
        if (!v.IsArray()) return fail("an array of Tensors");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) {
          Napi::Value e = arr.Get(i);
          if (!TensorHandle::Is(env, e)) return fail("an array of Tensors");
          out.push_back(TensorHandle::Get(e));
        }
        return out;
      }
      if (ek == K::OptionalType) {
        c10::List<c10::optional<at::Tensor>> out;
        if (!v.IsArray()) return fail("an array of Tensors or nulls");
        auto arr = v.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) {
          Napi::Value e = arr.Get(i);
          if (e.IsNull() || e.IsUndefined()) {
            out.push_back(c10::nullopt);
          } else {
            if (!TensorHandle::Is(env, e)) return fail("an array of Tensors or nulls");
            out.push_back(TensorHandle::Get(e));
          }
        }
        return out;
      }
      throw std::invalid_argument(where + ": unsupported list type " + type->str());
    }
    default:
      throw std::invalid_argument(where + ": unsupported argument type " + type->str());
  }
}

Napi::Value fromIValue(Napi::Env env, const c10::IValue& v) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!t.defined()) return env.Null();
    return TensorHandle::Wrap(env, t);
  }
  if (v.isTensorList()) {
    auto list = v.toTensorList();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, TensorHandle::Wrap(env, list.get(i)));
    return arr;
  }
  if (v.isTuple()) {
    const auto& elems = v.toTupleRef().elements();
    auto arr = Napi::Array::New(env, elems.size());
    for (size_t i = 0; i < elems.size(); i++) arr.Set(i, fromIValue(env, elems[i]));
    return arr;
  }
  if (v.isNone()) return env.Null();
  if (v.isInt()) return Napi::Number::New(env, (double)v.toInt());
  if (v.isDouble()) return Napi::Number::New(env, v.toDouble());
  if (v.isBool()) return Napi::Boolean::New(env, v.toBool());
  if (v.isScalar()) return Napi::Number::New(env, v.toScalar().toDouble());
  if (v.isIntList()) {
    auto list = v.toIntList();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, Napi::Number::New(env, (double)list.get(i)));
    return arr;
  }
  if (v.isString()) return Napi::String::New(env, v.toStringRef());
  if (v.isObject()) return ObjectHandle::Wrap(env, v);
  throw std::runtime_error(std::string("unsupported return type ") + v.tagKind());
}

// opHandle(name, overload) -> { id, schema, args: [{name, type, hasDefault, kwargOnly}] }
Napi::Value OpHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString())
      throw Napi::TypeError::New(env, "opHandle(name: string, overload: string)");
    auto* data = env.GetInstanceData<AddonData>();
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string overload = info[1].As<Napi::String>().Utf8Value();
    auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!handle) throw std::invalid_argument("no ATen operator " + name + (overload.empty() ? "" : "." + overload));
    data->ops.push_back(*handle);
    data->opNames.push_back(name + (overload.empty() ? "" : "." + overload));
    const auto& schema = handle->schema();
    auto result = Napi::Object::New(env);
    result.Set("id", Napi::Number::New(env, (double)(data->ops.size() - 1)));
    std::ostringstream os;
    os << schema;
    result.Set("schema", os.str());
    auto args = Napi::Array::New(env, schema.arguments().size());
    for (size_t i = 0; i < schema.arguments().size(); i++) {
      const auto& a = schema.arguments()[i];
      auto o = Napi::Object::New(env);
      o.Set("name", a.name());
      o.Set("type", a.type()->str());
      o.Set("hasDefault", a.default_value().has_value());
      o.Set("kwargOnly", a.kwarg_only());
      args.Set(i, o);
    }
    result.Set("args", args);
    return result;
  });
}

// callOp(id, argsArray, discardResult?): boxed call; missing or undefined arguments take the schema default.
// discardResult skips wrapping the outputs (in-place ops return an alias of their input: no JS object needed,
// which also spares the GC a finaliser per optimiser update).
Napi::Value CallOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto* data = env.GetInstanceData<AddonData>();
    const size_t id = info[0].As<Napi::Number>().Uint32Value();
    if (id >= data->ops.size()) throw std::invalid_argument("bad operator id");
    const c10::OperatorHandle& op = data->ops[id];
    const auto& schema = op.schema();
    const auto& formals = schema.arguments();
    auto jsArgs = info[1].As<Napi::Array>();
    const uint32_t given = jsArgs.Length();
    if (given > formals.size()) {
      throw std::invalid_argument(data->opNames[id] + ": " + std::to_string(given) + " arguments given, schema takes " +
                                  std::to_string(formals.size()));
    }
    torch::jit::Stack stack;
    stack.reserve(formals.size());
    for (size_t i = 0; i < formals.size(); i++) {
      const auto& formal = formals[i];
      Napi::Value v = i < given ? jsArgs.Get(i) : env.Undefined();
      if (v.IsUndefined()) {
        if (!formal.default_value()) {
          throw std::invalid_argument(data->opNames[id] + ": missing argument '" + formal.name() + "'");
        }
        stack.push_back(*formal.default_value());
      } else {
        stack.push_back(toIValue(env, v, formal.type(), data->opNames[id] + " argument '" + formal.name() + "'"));
      }
    }
    op.callBoxed(&stack);
    if (stack.empty() || (info.Length() > 2 && info[2].ToBoolean().Value())) return env.Undefined();
    if (stack.size() == 1) return fromIValue(env, stack[0]);
    auto arr = Napi::Array::New(env, stack.size());
    for (size_t i = 0; i < stack.size(); i++) arr.Set(i, fromIValue(env, stack[i]));
    return arr;
  });
}

// fromArray(typedArray, shape, dtype?) copies JS data into a new CPU tensor.
Napi::Value FromArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsArray())
      throw Napi::TypeError::New(env, "fromArray(typedArray, shape)");
    auto ta = info[0].As<Napi::TypedArray>();
    auto shapeArr = info[1].As<Napi::Array>();
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (uint32_t i = 0; i < shapeArr.Length(); i++) {
      int64_t d = shapeArr.Get(i).As<Napi::Number>().Int64Value();
      if (d < 0) throw std::invalid_argument("fromArray: negative dimension");
      shape.push_back(d);
      numel *= d;
    }
    at::ScalarType st;
    switch (ta.TypedArrayType()) {
      case napi_float32_array: st = at::kFloat; break;
      case napi_float64_array: st = at::kDouble; break;
      case napi_int32_array: st = at::kInt; break;
      case napi_bigint64_array: st = at::kLong; break;
      case napi_uint8_array: st = at::kByte; break;
      case napi_int8_array: st = at::kChar; break;
      default: throw std::invalid_argument("fromArray: unsupported typed array type");
    }
    if ((int64_t)ta.ElementLength() != numel) {
      throw std::invalid_argument("fromArray: shape has " + std::to_string(numel) + " elements but the array has " +
                                  std::to_string(ta.ElementLength()));
    }
    auto* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(st));
    if (numel) std::memcpy(t.data_ptr(), base, ta.ByteLength());
    if (info.Length() > 2 && info[2].IsString()) {
      at::ScalarType want = parseDtype(info[2].As<Napi::String>().Utf8Value());
      if (want != st) t = t.to(want);
    }
    return TensorHandle::Wrap(env, t);
  });
}

// backward(tensors, grads|null, retainGraph)
Napi::Value Backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto tArr = info[0].As<Napi::Array>();
    std::vector<at::Tensor> tensors, grads;
    for (uint32_t i = 0; i < tArr.Length(); i++) tensors.push_back(TensorHandle::Get(tArr.Get(i)));
    if (info.Length() > 1 && info[1].IsArray()) {
      auto gArr = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < gArr.Length(); i++) grads.push_back(TensorHandle::Get(gArr.Get(i)));
    }
    bool retain = info.Length() > 2 && info[2].ToBoolean().Value();
    torch::autograd::backward(tensors, grads, retain, false);
    return env.Undefined();
  });
}

Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  bool prev = at::GradMode::is_enabled();
  at::GradMode::set_enabled(info[0].ToBoolean().Value());
  return Napi::Boolean::New(info.Env(), prev);
}

Napi::Value IsGradEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), at::GradMode::is_enabled());
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    int n = info[0].As<Napi::Number>().Int32Value();
    if (n < 1) throw std::invalid_argument("setNumThreads: need at least 1 thread");
    at::set_num_threads(n);
    return info.Env().Undefined();
  });
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), at::get_num_threads());
}

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    uint64_t seed = (uint64_t)info[0].As<Napi::Number>().Int64Value();
    auto gen = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(seed);
    }
    return info.Env().Undefined();
  });
}

Napi::Value SyncExternalMemory(const Napi::CallbackInfo& info) {
  auto* data = info.Env().GetInstanceData<AddonData>();
  syncExternalMemory(info.Env(), data);
  return Napi::Number::New(info.Env(), (double)data->liveBytes);
}

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), at::hasCUDA());
}

// glibc serves large blocks (> 128 KB..32 MB) with fresh mmap'd pages and returns them on free, so every
// activation tensor of a training step costs page faults plus kernel zeroing (measured: ~80k faults and ~15% of
// a 128 px AnoSeg step). Keeping freed memory in the heap lets the next step reuse it. RSS then stays at the
// step's peak instead of shrinking between steps. ANOSEG_MALLOC_RETAIN=0 keeps glibc's defaults.
bool RetainFreedMemory() {
#ifdef __GLIBC__
  const char* env = std::getenv("ANOSEG_MALLOC_RETAIN");
  if (env && std::strcmp(env, "0") == 0) return false;
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;  // -1: never trim
#else
  return false;
#endif
}

const bool kRetainFreedMemory = RetainFreedMemory();

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  auto o = Napi::Object::New(info.Env());
  o.Set("torchVersion", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH));
  o.Set("parallel", at::get_parallel_info());
  o.Set("mkldnn", at::hasMKLDNN());
  o.Set("cuda", at::hasCUDA());
  o.Set("retainFreedMemory", kRetainFreedMemory);
  return o;
}

// Legacy autograd profiler: profilerStart(); ...; profilerStop(byShape) -> inclusive time and count per operator
// name, or per name and input shapes when byShape is true.
Napi::Value ProfilerStart(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    torch::autograd::profiler::enableProfilerLegacy(
        torch::autograd::profiler::ProfilerConfig(torch::autograd::profiler::ProfilerState::CPU, true, false));
    return info.Env().Undefined();
  });
}

Napi::Value ProfilerStop(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const bool byShape = info.Length() > 0 && info[0].ToBoolean().Value();
    auto events = torch::autograd::profiler::disableProfilerLegacy();
    // Pair push/pop events per thread and aggregate inclusive time by name.
    struct Agg {
      double us = 0;
      int64_t count = 0;
    };
    std::map<std::string, Agg> agg;
    for (auto& threadEvents : events) {
      std::vector<const torch::autograd::profiler::LegacyEvent*> stack;
      for (auto& e : threadEvents) {
        if (e.kind() == torch::autograd::profiler::EventKind::PushRange) {
          stack.push_back(&e);
        } else if (e.kind() == torch::autograd::profiler::EventKind::PopRange && !stack.empty()) {
          const auto* start = stack.back();
          stack.pop_back();
          std::string key = start->name();
          if (byShape) {
            std::ostringstream shapes;
            for (const auto& shape : start->shapes()) {
              shapes << " [";
              for (size_t d = 0; d < shape.size(); d++) shapes << (d ? "," : "") << shape[d];
              shapes << "]";
            }
            key += shapes.str();
          }
          auto& a = agg[key];
          a.us += start->cpuElapsedUs(e);
          a.count += 1;
        }
      }
    }
    auto arr = Napi::Array::New(info.Env());
    uint32_t i = 0;
    for (auto& kv : agg) {
      auto o = Napi::Object::New(info.Env());
      o.Set("name", kv.first);
      o.Set("totalUs", kv.second.us);
      o.Set("count", (double)kv.second.count);
      arr.Set(i++, o);
    }
    return arr;
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function ctor = TensorHandle::Init(env);
  data->tensorCtor = Napi::Persistent(ctor);
  exports.Set("TensorHandle", ctor);
  Napi::Function objectCtor = ObjectHandle::Init(env);
  data->objectCtor = Napi::Persistent(objectCtor);
  exports.Set("ObjectHandle", objectCtor);
  exports.Set("opHandle", Napi::Function::New(env, OpHandle));
  exports.Set("callOp", Napi::Function::New(env, CallOp));
  exports.Set("fromArray", Napi::Function::New(env, FromArray));
  exports.Set("backward", Napi::Function::New(env, Backward));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("cudaAvailable", Napi::Function::New(env, CudaAvailable));
  exports.Set("syncExternalMemory", Napi::Function::New(env, SyncExternalMemory));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("profilerStart", Napi::Function::New(env, ProfilerStart));
  exports.Set("profilerStop", Napi::Function::New(env, ProfilerStop));
  anoseg_native::registerDistributed(env, exports, [](const Napi::Value& v) -> at::Tensor& { return TensorHandle::Get(v); });
  return exports;
}

}  // namespace

NODE_API_MODULE(anoseg_torch, Init)
