// The one internal seam between the runtime and an engine library (ONNX Runtime, TensorRT).
//
// Buffer design (docs: legocompile/runtime/executor.py): one buffer per block boundary, allocated by the backend
// (host memory for ORT on the CPU, device memory for TensorRT). Every variant of block i reads boundary i and
// writes boundary i + 1, so an engine is bound to its two buffers once (ORT: an IoBinding; TensorRT: an execution
// context with setTensorAddress) and each call only runs the bound engines in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.hpp"

namespace lc {

class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual std::size_t elements() const = 0;
};

// An engine bound to one buffer set's (input, output) pair; owned by its Engine.
class Bound {
 public:
  virtual ~Bound() = default;
  virtual void run() = 0;  // throws lc::Error(Code::engine)
};

class Engine {
 public:
  virtual ~Engine() = default;
  // The binding of this engine to (in, out) for buffer set `set_id`, created on first use; thread-safe. The
  // reference stays valid until unbind(set_id) or the engine's destruction.
  virtual Bound& bind(std::uint64_t set_id, Buffer& in, Buffer& out) = 0;
  // The same for an engine with several outputs (the last block of a model whose forward returns a tuple): one
  // buffer per output, in the ONNX's output order. A backend that serves one output keeps this default.
  virtual Bound& bind_outputs(std::uint64_t set_id, Buffer& in, const std::vector<Buffer*>& outs) {
    if (outs.size() != 1)
      throw Error(Code::engine, "this backend's engines have one output, but " + std::to_string(outs.size()) +
                                    " output buffers were bound");
    return bind(set_id, in, *outs.front());
  }
  virtual void unbind(std::uint64_t set_id) noexcept = 0;
};

struct BackendOptions {
  int threads = 0;  // intra-op threads per engine (0: all cores this process may use)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // An engine from its (verified) bytes.
  virtual std::shared_ptr<Engine> load(const std::vector<unsigned char>& bytes) = 0;
  virtual std::unique_ptr<Buffer> allocate(const std::vector<std::int64_t>& shape) = 0;
  // Copies between caller host memory and a buffer (a memcpy on the CPU; a stream copy on a GPU).
  virtual void copy_in(Buffer& dst, const float* src, std::size_t elements) = 0;
  virtual void copy_out(float* dst, Buffer& src, std::size_t elements) = 0;
  // Waits for the chain's work (a no-op on the CPU; stream synchronize on a GPU).
  virtual void synchronize() = 0;
};

// "onnxruntime" (always built) or "tensorrt" (built where CMake found TensorRT); throws lc::Error for others
// with Python's message "unknown backend 'x'; available: ...".
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options);

// The names compiled in, for messages.
std::vector<std::string> available_backends();

}  // namespace lc
