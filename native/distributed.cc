// Thin binding of libtorch's distributed backend (c10d): a TCPStore for rendezvous (rank 0 hosts it) and a
// ProcessGroupGloo over it, with allreduce, broadcast and barrier on lists of CPU tensors. Generic: it knows
// ranks and tensors, nothing about models or training.
//
// Every call blocks the calling thread until the collective finished on all ranks (or failed): a collective
// is a synchronisation point by nature, and the training loops that use it are synchronous. Failures (a peer
// closed its connection, the timeout passed, the rendezvous did not complete) become JS errors.
//
// Gloo's headers (ProcessGroupGloo.hpp includes <gloo/...>) are not part of Debian's libtorch-dev: they come with
// libgloo-dev, the same Gloo that libtorch_cpu.so is linked against (libgloo.so.0).

#include "distributed.h"

// The header declares ProcessGroupGloo only for builds with Gloo, which libtorch_cpu.so is.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace anoseg_native {
namespace {

TensorFromValue gTensorFromValue = nullptr;

std::string messageOf(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

class ProcessGroupHandle : public Napi::ObjectWrap<ProcessGroupHandle> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "ProcessGroup",
                       {
                           InstanceMethod("allreduce", &ProcessGroupHandle::Allreduce),
                           InstanceMethod("broadcast", &ProcessGroupHandle::Broadcast),
                           InstanceMethod("barrier", &ProcessGroupHandle::Barrier),
                           InstanceMethod("close", &ProcessGroupHandle::Close),
                           InstanceAccessor("rank", &ProcessGroupHandle::Rank, nullptr),
                           InstanceAccessor("size", &ProcessGroupHandle::Size, nullptr),
                       });
  }

  // new ProcessGroup({ rank, size, host, port, timeoutMs, interface?, bindHost? }): joins the group; blocks
  // until every rank joined. Rank 0 hosts the TCPStore at host:port; the others connect to it.
  explicit ProcessGroupHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ProcessGroupHandle>(info) {
    Napi::Env env = info.Env();
    try {
      if (info.Length() != 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "ProcessGroup(options)");
      Napi::Object o = info[0].As<Napi::Object>();
      rank_ = o.Get("rank").As<Napi::Number>().Int32Value();
      size_ = o.Get("size").As<Napi::Number>().Int32Value();
      const std::string host = o.Get("host").As<Napi::String>().Utf8Value();
      const int port = o.Get("port").As<Napi::Number>().Int32Value();
      const std::chrono::milliseconds timeout(o.Get("timeoutMs").As<Napi::Number>().Int64Value());

      c10d::TCPStoreOptions storeOptions;
      storeOptions.port = static_cast<std::uint16_t>(port);
      storeOptions.isServer = rank_ == 0;
      storeOptions.numWorkers = static_cast<std::size_t>(size_);
      storeOptions.waitWorkers = true;
      storeOptions.timeout = timeout;
      auto store = c10::make_intrusive<c10d::TCPStore>(host, storeOptions);

      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      const Napi::Value iface = o.Get("interface");
      const Napi::Value bindHost = o.Get("bindHost");
      if (iface.IsString()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface.As<Napi::String>()));
      } else if (bindHost.IsString()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(bindHost.As<Napi::String>()));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank_, size_, options);
      store_ = store;
    } catch (const Napi::Error& e) {
      e.ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      Napi::Error::New(env, "joining the process group failed: " + messageOf(e)).ThrowAsJavaScriptException();
    }
  }

 private:
  // Runs fn (which returns the collective's Work objects), waits for all of them, then runs after(); errors
  // become JS errors.
  template <typename Fn, typename After>
  Napi::Value collective(const Napi::CallbackInfo& info, const char* what, Fn&& fn, After&& after) {
    Napi::Env env = info.Env();
    try {
      if (!group_) throw Napi::Error::New(env, "the process group was closed");
      std::vector<c10::intrusive_ptr<c10d::Work>> works = fn();
      for (auto& w : works) w->wait();
      after();
    } catch (const Napi::Error& e) {
      e.ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      Napi::Error::New(env, std::string(what) + " failed on rank " + std::to_string(rank_) + " of " +
                                std::to_string(size_) + ": " + messageOf(e))
          .ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  static std::vector<at::Tensor> tensorList(const Napi::Value& v) {
    if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), "expected an array of tensors");
    Napi::Array arr = v.As<Napi::Array>();
    std::vector<at::Tensor> out;
    out.reserve(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); i++) out.push_back(gTensorFromValue(arr.Get(i)));
    return out;
  }

  // allreduce(tensors, op): each tensor becomes the elementwise sum ('sum') or mean ('avg') of that tensor over
  // all ranks, in place. One collective per tensor, all in flight together.
  Napi::Value Allreduce(const Napi::CallbackInfo& info) {
    std::vector<at::Tensor> tensors;
    std::string op = "sum";
    auto works = [&]() {
      tensors = tensorList(info[0]);
      if (info.Length() > 1 && info[1].IsString()) op = info[1].As<Napi::String>().Utf8Value();
      if (op != "sum" && op != "avg") throw Napi::TypeError::New(info.Env(), "allreduce op must be 'sum' or 'avg'");
      std::vector<c10::intrusive_ptr<c10d::Work>> ws;
      for (auto& t : tensors) {
        std::vector<at::Tensor> one{t};
        ws.push_back(group_->allreduce(one));
      }
      return ws;
    };
    return collective(info, "allreduce", works, [&]() {
      if (op == "avg")
        for (auto& t : tensors) t.div_(size_);
    });
  }

  // broadcast(tensors, root): every rank's tensors take root's values, in place.
  Napi::Value Broadcast(const Napi::CallbackInfo& info) {
    return collective(info, "broadcast", [&]() {
      std::vector<at::Tensor> tensors = tensorList(info[0]);
      c10d::BroadcastOptions opts;
      opts.rootRank = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : 0;
      std::vector<c10::intrusive_ptr<c10d::Work>> ws;
      for (auto& t : tensors) {
        std::vector<at::Tensor> one{t};
        ws.push_back(group_->broadcast(one, opts));
      }
      return ws;
    }, [] {});
  }

  Napi::Value Barrier(const Napi::CallbackInfo& info) {
    return collective(info, "barrier", [&]() {
      return std::vector<c10::intrusive_ptr<c10d::Work>>{group_->barrier()};
    }, [] {});
  }

  // Leaves the group: closes the connections (rank 0 also stops hosting the store).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    group_.reset();
    store_.reset();
    return info.Env().Undefined();
  }

  Napi::Value Rank(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rank_); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), size_); }

  int rank_ = 0;
  int size_ = 1;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
};

}  // namespace

void registerDistributed(Napi::Env env, Napi::Object exports, TensorFromValue tensorFromValue) {
  gTensorFromValue = tensorFromValue;
  exports.Set("ProcessGroup", ProcessGroupHandle::Init(env));
}

}  // namespace anoseg_native
