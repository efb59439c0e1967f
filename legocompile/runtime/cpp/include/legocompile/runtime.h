/* legocompile C++ runtime: a small C ABI over an engine bundle (manifest.json + engines/ + onnx/).
 *
 * Open a bundle (schema, safe paths and every file's sha256 checked, with the Python reader's one-line messages),
 * select one engine per block under a latency/memory budget (the same selection as Python's optimizer) or
 * explicitly, and run the chain on caller buffers at any batch size.
 *
 * Errors: every function that can fail returns an lc_status; the message of the last failure on the calling
 * thread is lc_last_error() (one line, valid until the thread's next call into this library).
 * Threads: lc_run may be called from any number of threads at once, also while another thread selects; each
 * inference runs entirely on one selection. lc_close must not race with other calls on the same handle.
 */
#ifndef LEGOCOMPILE_RUNTIME_H
#define LEGOCOMPILE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define LC_API __declspec(dllexport)
#else
#define LC_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define LC_ABI_VERSION 1

typedef enum lc_status {
  LC_OK = 0,
  LC_ERROR = 1,            /* a user error (Python: LegoCompileError): bundle, manifest, selection, argument value */
  LC_INFEASIBLE = 2,       /* no selection fits the budget (Python: InfeasibleBudgetError) */
  LC_ENGINE_ERROR = 3,     /* the engine backend failed to load or run an engine */
  LC_INVALID_ARGUMENT = 4, /* a null handle or pointer, an index out of range, a negative batch */
  LC_OUT_OF_MEMORY = 5,
  LC_INTERNAL = 6
} lc_status;

typedef struct lc_runtime lc_runtime; /* opaque */

typedef struct lc_open_options {
  int verify;          /* nonzero (default): check every listed file's sha256 at open */
  int threads;         /* intra-op threads per engine; 0 (default): the bundle's profile setting, else all cores */
  double keep_warm_mb; /* profiled memory of engines outside the selection kept loaded; 0 (default): unload */
} lc_open_options;

typedef struct lc_budget {
  int has_latency;   /* nonzero: bound the predicted latency (chain overhead included) */
  double latency_ms; /* milliseconds */
  int has_memory;    /* nonzero: bound the predicted memory */
  double memory_mb;  /* megabytes (1e6 bytes) */
} lc_budget;

typedef struct lc_totals {
  double latency_ms;    /* predicted: sum of the options' latencies + the manifest's teacher.chain_overhead_ms */
  int64_t memory_bytes; /* predicted: sum of the options' memory + the boundary buffers (float32, profile batch) */
  double accuracy;      /* predicted: teacher accuracy x prod(retention), the multiplicative model, at most 1 */
} lc_totals;

typedef struct lc_option_info {
  const char* variant;   /* e.g. "s0", "s0.5" */
  const char* precision; /* fp32 | fp16 | int8 */
  const char* backend;
  double latency_ms;
  int64_t memory_bytes;
  double accuracy_drop;
  const char* excluded;  /* NULL: selectable; else the reason it never is */
} lc_option_info;

LC_API int lc_abi_version(void);
LC_API const char* lc_version(void);
LC_API const char* lc_last_error(void);
LC_API void lc_open_options_init(lc_open_options* options);

/* Opens and verifies a bundle; loads no engine yet. options may be NULL (defaults). */
LC_API lc_status lc_open(const char* path, const lc_open_options* options, lc_runtime** out);
LC_API void lc_close(lc_runtime* rt); /* NULL is allowed */

/* The bundle: blocks, their options (the indices that selections use), shapes (dims[0] = -1: the batch axis). */
LC_API lc_status lc_num_blocks(const lc_runtime* rt, size_t* out);
LC_API lc_status lc_block_name(const lc_runtime* rt, size_t block, const char** out);
LC_API lc_status lc_num_options(const lc_runtime* rt, size_t block, size_t* out);
LC_API lc_status lc_option(const lc_runtime* rt, size_t block, size_t option, lc_option_info* out);
LC_API lc_status lc_input_shape(const lc_runtime* rt, int64_t* dims, size_t capacity, size_t* ndim);
LC_API lc_status lc_output_shape(const lc_runtime* rt, int64_t* dims, size_t capacity, size_t* ndim);
/* A model whose forward returns several tensors: how many (1 otherwise), and output k's shape (k = 0 is the
 * output lc_output_shape describes). */
LC_API lc_status lc_num_outputs(const lc_runtime* rt, size_t* out);
LC_API lc_status lc_output_shape_at(const lc_runtime* rt, size_t output, int64_t* dims, size_t capacity, size_t* ndim);
LC_API lc_status lc_manifest_json(const lc_runtime* rt, const char** data, size_t* size);

/* The best selection under a budget, without switching (choice: one option index per block; may be NULL). */
LC_API lc_status lc_plan(const lc_runtime* rt, const lc_budget* budget, int32_t* choice, lc_totals* totals);
/* Switches to the best selection under a budget. choice and totals may be NULL. */
LC_API lc_status lc_select(lc_runtime* rt, const lc_budget* budget, int32_t* choice, lc_totals* totals);
/* Switches to an explicit selection: (variants[i], precisions[i]) for block i, n = the number of blocks. */
LC_API lc_status lc_select_options(lc_runtime* rt, const char* const* variants, const char* const* precisions,
                                   size_t n, int32_t* choice, lc_totals* totals);
/* The current selection (before any select or run: the original s0/fp32 one, not loaded yet) and its totals. */
LC_API lc_status lc_selection(const lc_runtime* rt, int32_t* choice, lc_totals* totals);
/* The least achievable latency (overhead included) and memory (boundary buffers included): what an LC_INFEASIBLE
 * message reports. */
LC_API lc_status lc_min_totals(const lc_runtime* rt, double* latency_ms, int64_t* memory_bytes);

/* Runs the current selection: input is batch x (input shape after the batch axis) float32 values, C order;
 * output receives batch x (output shape after the batch axis) values. */
LC_API lc_status lc_run(lc_runtime* rt, const float* input, int64_t batch, float* output);
/* The same for any number of outputs: outputs[k] receives batch x (output k's shape after the batch axis) values;
 * count must be lc_num_outputs. lc_run refuses a bundle with several outputs. */
LC_API lc_status lc_run_outputs(lc_runtime* rt, const float* input, int64_t batch, float* const* outputs,
                                size_t count);

/* Engines loaded from the bundle so far (a switch back to a warm engine loads nothing). */
LC_API lc_status lc_engine_loads(const lc_runtime* rt, int64_t* out);

/* Diagnostics (benchmarks), on the current selection, over rounds x iters timed calls (each round after iters
 * untimed ones): chain_ns, the median call time; block_ns (one per block), each engine's median time inside the
 * chain; overhead_ns, the median of (call time - the sum of that call's engine times): what the runtime itself
 * costs per call (including two clock reads per engine). */
LC_API lc_status lc_measure(lc_runtime* rt, const float* input, int64_t batch, float* output, int rounds, int iters,
                            double* chain_ns, double* block_ns, double* overhead_ns);

#ifdef __cplusplus
}
#endif

#endif /* LEGOCOMPILE_RUNTIME_H */
