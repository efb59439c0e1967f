// TensorRT through its C++ API (UNVERIFIED: compiled only where CMake finds TensorRT and CUDA, which CI never
// does; written to the runtime's buffer design and the engine-file format of legocompile/backends/tensorrt).
//
// * One device buffer per block boundary (cudaMalloc), shared by every variant of the block.
// * An engine is bound to (input, output) once per buffer set: an IExecutionContext whose tensor addresses are set
//   with setTensorAddress at binding time; a call only enqueues (enqueueV3) on the backend's one stream.
// * Engine files: b"LEGOTRT\0", a little-endian u32 header length, a JSON header, then the serialized plan; the
//   plan's sha256 from the header is checked before deserializing (the file's own sha256 was checked by the
//   reader). Device/version compatibility is refused by TensorRT itself here; the Python backend's one-line
//   compatibility messages are not ported.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "backend.hpp"
#include "error.hpp"
#include "manifest.hpp"

namespace lc {
namespace {

void cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(Code::engine, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

class Logger final : public nvinfer1::ILogger {
  void log(Severity, const char*) noexcept override {}  // errors surface as failed calls
};
Logger g_logger;

class DeviceBuffer final : public Buffer {
 public:
  explicit DeviceBuffer(const std::vector<std::int64_t>& shape) : shape_(shape) {
    elements_ = 1;
    for (auto d : shape) elements_ *= static_cast<std::size_t>(d);
    cuda(cudaMalloc(&data_, (elements_ ? elements_ : 1) * sizeof(float)), "cudaMalloc");
  }
  ~DeviceBuffer() override { cudaFree(data_); }
  std::size_t elements() const override { return elements_; }
  void* data() { return data_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }

 private:
  std::vector<std::int64_t> shape_;
  std::size_t elements_ = 0;
  void* data_ = nullptr;
};

class TrtBound final : public Bound {
 public:
  TrtBound(nvinfer1::ICudaEngine& engine, cudaStream_t stream, DeviceBuffer& in, DeviceBuffer& out)
      : stream_(stream) {
    context_.reset(engine.createExecutionContext());
    if (!context_) throw Error(Code::engine, "TensorRT: createExecutionContext failed");
    const char* input = nullptr;
    const char* output = nullptr;
    for (int i = 0; i < engine.getNbIOTensors(); ++i) {
      const char* name = engine.getIOTensorName(i);
      (engine.getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? input : output) = name;
    }
    if (!input || !output) throw Error(Code::engine, "TensorRT: an engine needs one input and one output");
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int>(in.shape().size());
    for (int d = 0; d < dims.nbDims; ++d) dims.d[d] = in.shape()[d];
    if (!context_->setInputShape(input, dims)) throw Error(Code::engine, "TensorRT: batch size outside the profile");
    if (!context_->setTensorAddress(input, in.data()) || !context_->setTensorAddress(output, out.data()))
      throw Error(Code::engine, "TensorRT: setTensorAddress failed");
  }
  void run() override {
    if (!context_->enqueueV3(stream_)) throw Error(Code::engine, "TensorRT: enqueueV3 failed");
  }

 private:
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_;
};

class TrtEngine final : public Engine {
 public:
  TrtEngine(nvinfer1::IRuntime& runtime, const std::vector<unsigned char>& bytes, cudaStream_t stream)
      : stream_(stream) {
    static const char magic[8] = {'L', 'E', 'G', 'O', 'T', 'R', 'T', '\0'};
    if (bytes.size() < 12 || std::memcmp(bytes.data(), magic, 8) != 0)
      throw Error(Code::engine, "TensorRT: not a legocompile engine file (no LEGOTRT header)");
    std::uint32_t len = 0;
    for (int k = 0; k < 4; ++k) len |= static_cast<std::uint32_t>(bytes[8 + k]) << (8 * k);
    if (12 + static_cast<std::size_t>(len) > bytes.size()) throw Error(Code::engine, "TensorRT: truncated header");
    const auto header = nlohmann::json::parse(bytes.begin() + 12, bytes.begin() + 12 + len);
    const unsigned char* plan = bytes.data() + 12 + len;
    const std::size_t plan_size = bytes.size() - 12 - len;
    if (header.value("plan_sha256", std::string()) != sha256_hex(plan, plan_size))
      throw Error(Code::engine, "TensorRT: the engine's plan does not match its header's sha256");
    engine_.reset(runtime.deserializeCudaEngine(plan, plan_size));
    if (!engine_) throw Error(Code::engine, "TensorRT: cannot deserialize the engine (built for another TensorRT or GPU?)");
  }
  ~TrtEngine() override { bound_.clear(); }  // contexts before their engine

  Bound& bind(std::uint64_t set_id, Buffer& in, Buffer& out) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = bound_.find(set_id);
    if (it == bound_.end())
      it = bound_.emplace(set_id, std::make_unique<TrtBound>(*engine_, stream_, static_cast<DeviceBuffer&>(in),
                                                              static_cast<DeviceBuffer&>(out))).first;
    return *it->second;
  }
  void unbind(std::uint64_t set_id) noexcept override {
    std::lock_guard<std::mutex> lock(mu_);
    bound_.erase(set_id);
  }

 private:
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  cudaStream_t stream_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::unique_ptr<TrtBound>> bound_;
};

// One stream per backend. Concurrent calls from several threads serialize on it (TensorRT contexts are per
// buffer set, so per thread; the stream orders their work); a stream per thread is the next step if needed.
class TrtBackend final : public Backend {
 public:
  explicit TrtBackend(const BackendOptions&) {
    runtime_.reset(nvinfer1::createInferRuntime(g_logger));
    if (!runtime_) throw Error(Code::engine, "TensorRT: createInferRuntime failed");
    cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~TrtBackend() override { cudaStreamDestroy(stream_); }
  const char* name() const override { return "tensorrt"; }
  std::shared_ptr<Engine> load(const std::vector<unsigned char>& bytes) override {
    return std::make_shared<TrtEngine>(*runtime_, bytes, stream_);
  }
  std::unique_ptr<Buffer> allocate(const std::vector<std::int64_t>& shape) override {
    return std::make_unique<DeviceBuffer>(shape);
  }
  void copy_in(Buffer& dst, const float* src, std::size_t n) override {
    std::lock_guard<std::mutex> lock(mu_);
    cuda(cudaMemcpyAsync(static_cast<DeviceBuffer&>(dst).data(), src, n * sizeof(float), cudaMemcpyHostToDevice,
                         stream_), "cudaMemcpyAsync");
  }
  void copy_out(float* dst, Buffer& src, std::size_t n) override {
    std::lock_guard<std::mutex> lock(mu_);
    cuda(cudaMemcpyAsync(dst, static_cast<DeviceBuffer&>(src).data(), n * sizeof(float), cudaMemcpyDeviceToHost,
                         stream_), "cudaMemcpyAsync");
    cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void synchronize() override {}  // copy_out synchronizes after the chain's last engine

 private:
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const BackendOptions& options) {
  return std::make_unique<TrtBackend>(options);
}

}  // namespace lc
