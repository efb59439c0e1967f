// ONNX Runtime through its versioned C API. Built against the 1.21 headers (ORT_API_VERSION 21); any newer
// library serves that API version. Sessions get the chaining thread settings of
// legocompile/backends/onnxrt/session.py: intra-op threads set explicitly, one inter-op thread, full graph
// optimization, and spinning stopped when a run ends (an idle engine of the chain must not steal the cores).
#include <cstring>
#include <mutex>
#include <onnxruntime_c_api.h>
#include <unordered_map>

#include "backend.hpp"
#include "error.hpp"
#include "pyfmt.hpp"

#ifdef LEGOCOMPILE_WITH_TENSORRT
namespace lc {
std::unique_ptr<Backend> make_tensorrt_backend(const BackendOptions& options);
}
#endif

namespace lc {
namespace {

const OrtApi* api() {
  static const OrtApi* a = [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* p = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (p == nullptr)
      throw Error(Code::engine, std::string("onnxruntime: the library (") + (base ? base->GetVersionString() : "?") +
                                    ") does not serve C API version " + std::to_string(ORT_API_VERSION));
    return p;
  }();
  return a;
}

void check(OrtStatus* status) {
  if (status == nullptr) return;
  std::string message = std::string("onnxruntime: ") + api()->GetErrorMessage(status);
  api()->ReleaseStatus(status);
  for (auto& c : message)
    if (c == '\n' || c == '\r') c = ' ';
  throw Error(Code::engine, message);
}

// One environment per process, never released (ORT's environment outlives every session; releasing it at exit
// races with other static destructors).
OrtEnv* env() {
  static OrtEnv* e = [] {
    OrtEnv* p = nullptr;
    check(api()->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "legocompile", &p));
    return p;
  }();
  return e;
}

const OrtMemoryInfo* cpu_memory() {
  static OrtMemoryInfo* info = [] {
    OrtMemoryInfo* p = nullptr;
    check(api()->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &p));
    return p;
  }();
  return info;
}

class OrtHostBuffer final : public Buffer {
 public:
  explicit OrtHostBuffer(const std::vector<std::int64_t>& shape) : shape_(shape) {
    elements_ = 1;
    for (auto d : shape) elements_ *= static_cast<std::size_t>(d);
    data_.reset(new float[elements_ ? elements_ : 1]());
    check(api()->CreateTensorWithDataAsOrtValue(cpu_memory(), data_.get(), elements_ * sizeof(float), shape_.data(),
                                                shape_.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &value_));
  }
  ~OrtHostBuffer() override { api()->ReleaseValue(value_); }
  std::size_t elements() const override { return elements_; }
  float* data() { return data_.get(); }
  OrtValue* value() { return value_; }

 private:
  std::vector<std::int64_t> shape_;
  std::size_t elements_ = 0;
  std::unique_ptr<float[]> data_;
  OrtValue* value_ = nullptr;
};

class OrtBound final : public Bound {
 public:
  OrtBound(OrtSession* session, const char* input, const std::vector<std::string>& outputs, OrtHostBuffer& in,
           const std::vector<OrtHostBuffer*>& outs)
      : session_(session) {
    check(api()->CreateIoBinding(session, &binding_));
    try {
      check(api()->BindInput(binding_, input, in.value()));
      for (std::size_t k = 0; k < outputs.size(); ++k) check(api()->BindOutput(binding_, outputs[k].c_str(), outs[k]->value()));
    } catch (...) {
      api()->ReleaseIoBinding(binding_);
      throw;
    }
  }
  ~OrtBound() override { api()->ReleaseIoBinding(binding_); }
  void run() override { check(api()->RunWithBinding(session_, nullptr, binding_)); }

 private:
  OrtSession* session_;
  OrtIoBinding* binding_ = nullptr;
};

class OrtEngine final : public Engine {
 public:
  OrtEngine(const std::vector<unsigned char>& bytes, const BackendOptions& options) {
    OrtSessionOptions* so = nullptr;
    check(api()->CreateSessionOptions(&so));
    struct Guard {
      OrtSessionOptions* so;
      ~Guard() { api()->ReleaseSessionOptions(so); }
    } guard{so};
    check(api()->SetIntraOpNumThreads(so, options.threads));
    check(api()->SetInterOpNumThreads(so, 1));
    check(api()->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL));
    check(api()->SetSessionLogSeverityLevel(so, 3));
    check(api()->AddSessionConfigEntry(so, "session.force_spinning_stop", "1"));
    check(api()->CreateSessionFromArray(env(), bytes.data(), bytes.size(), so, &session_));
    try {
      OrtAllocator* alloc = nullptr;
      check(api()->GetAllocatorWithDefaultOptions(&alloc));
      std::size_t count = 0;
      check(api()->SessionGetInputCount(session_, &count));
      if (count != 1) throw Error(Code::engine, "onnxruntime: an engine must have exactly one input");
      check(api()->SessionGetOutputCount(session_, &count));
      if (count < 1) throw Error(Code::engine, "onnxruntime: an engine must have an output");
      char* name = nullptr;
      check(api()->SessionGetInputName(session_, 0, alloc, &name));
      input_ = name;
      check(api()->AllocatorFree(alloc, name));
      for (std::size_t k = 0; k < count; ++k) {  // y (, y1, ...): the export's order
        check(api()->SessionGetOutputName(session_, k, alloc, &name));
        outputs_.emplace_back(name);
        check(api()->AllocatorFree(alloc, name));
      }
    } catch (...) {
      api()->ReleaseSession(session_);
      throw;
    }
  }
  ~OrtEngine() override {
    bound_.clear();  // bindings before their session
    api()->ReleaseSession(session_);
  }

  Bound& bind(std::uint64_t set_id, Buffer& in, Buffer& out) override { return bind_outputs(set_id, in, {&out}); }

  Bound& bind_outputs(std::uint64_t set_id, Buffer& in, const std::vector<Buffer*>& outs) override {
    if (outs.size() != outputs_.size())
      throw Error(Code::engine, "onnxruntime: the engine has " + std::to_string(outputs_.size()) + " outputs but " +
                                    std::to_string(outs.size()) + " buffers were bound");
    std::lock_guard<std::mutex> lock(mu_);
    auto it = bound_.find(set_id);
    if (it == bound_.end()) {
      std::vector<OrtHostBuffer*> hosts;
      for (Buffer* b : outs) hosts.push_back(static_cast<OrtHostBuffer*>(b));
      auto b = std::make_unique<OrtBound>(session_, input_.c_str(), outputs_, static_cast<OrtHostBuffer&>(in), hosts);
      it = bound_.emplace(set_id, std::move(b)).first;
    }
    return *it->second;
  }

  void unbind(std::uint64_t set_id) noexcept override {
    std::unique_ptr<OrtBound> gone;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = bound_.find(set_id);
    if (it != bound_.end()) {
      gone = std::move(it->second);
      bound_.erase(it);
    }
  }

 private:
  OrtSession* session_ = nullptr;
  std::string input_;
  std::vector<std::string> outputs_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::unique_ptr<OrtBound>> bound_;
};

class OrtBackend final : public Backend {
 public:
  explicit OrtBackend(const BackendOptions& options) : options_(options) { env(); }
  const char* name() const override { return "onnxruntime"; }
  std::shared_ptr<Engine> load(const std::vector<unsigned char>& bytes) override {
    return std::make_shared<OrtEngine>(bytes, options_);
  }
  std::unique_ptr<Buffer> allocate(const std::vector<std::int64_t>& shape) override {
    return std::make_unique<OrtHostBuffer>(shape);
  }
  void copy_in(Buffer& dst, const float* src, std::size_t n) override {
    std::memcpy(static_cast<OrtHostBuffer&>(dst).data(), src, n * sizeof(float));
  }
  void copy_out(float* dst, Buffer& src, std::size_t n) override {
    std::memcpy(dst, static_cast<OrtHostBuffer&>(src).data(), n * sizeof(float));
  }
  void synchronize() override {}

 private:
  BackendOptions options_;
};

}  // namespace

std::vector<std::string> available_backends() {
#ifdef LEGOCOMPILE_WITH_TENSORRT
  return {"onnxruntime", "tensorrt"};
#else
  return {"onnxruntime"};
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
  if (name == "onnxruntime") return std::make_unique<OrtBackend>(options);
#ifdef LEGOCOMPILE_WITH_TENSORRT
  if (name == "tensorrt") return make_tensorrt_backend(options);
#endif
  std::string have;
  for (const auto& b : available_backends()) have += (have.empty() ? "" : ", ") + b;
  throw user_error("unknown backend " + py_str_repr(name) + "; available: " + have);
}

}  // namespace lc
