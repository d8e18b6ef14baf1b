// glmserve._engine: the C++ engine for Python (tests, the CLI, benchmarks).
//
// Threading: the engine calls Python callbacks from its step thread; they take
// the GIL there. Every blocking call (step, stop, generate, the destructor)
// releases the GIL so that thread can run them. Python callables captured in
// the engine are released under the GIL, whatever thread drops the last copy.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <optional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config.h"
#include "cuda_tuning.h"
#include "engine.h"
#include "request_fields.gen.h"
#include "token_texts.h"
#include "weights.h"

namespace py = pybind11;

namespace {

// A Python callable that may be copied and destroyed on any thread.
std::shared_ptr<py::function> hold(py::function f) {
  return std::shared_ptr<py::function>(new py::function(std::move(f)), [](py::function* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

py::dict event_to_dict(const glm::TokenEvent& ev) {
  py::dict d;
  d["request_id"] = ev.request_id;
  d["choice"] = ev.choice;
  d["new_tokens"] = py::cast(ev.new_tokens);
  py::list lps;
  for (const glm::TokenLogprob& lp : ev.logprobs) {
    py::dict x;
    x["logprob"] = lp.logprob;
    x["top_ids"] = py::cast(lp.top_ids);
    x["top_logprobs"] = py::cast(lp.top_logprobs);
    lps.append(x);
  }
  d["logprobs"] = lps;
  d["choice_finished"] = ev.choice_finished;
  d["finished"] = ev.finished;
  d["reason"] = std::string(glm::to_string(ev.reason));
  d["error"] = ev.error;
  d["trim_bytes"] = ev.trim_bytes;
  d["prompt_tokens"] = ev.prompt_tokens;
  d["completion_tokens"] = ev.completion_tokens;
  return d;
}

class PyEngine {
 public:
  explicit PyEngine(const glm::EngineOptions& opts) {
    py::gil_scoped_release nogil;
    engine_ = glm::Engine::create(opts);
  }
  ~PyEngine() {
    py::gil_scoped_release nogil;  // the step thread may be waiting for the GIL in a callback
    engine_.reset();
  }

  void submit(uint64_t request_id, std::vector<int32_t> ids, py::function callback, const glm::SamplingParams& p) {
    glm::TokenCallback cb;
    if (!callback.is_none()) {
      auto fn = hold(std::move(callback));
      cb = [fn](const glm::TokenEvent& ev) {
        py::gil_scoped_acquire gil;
        try {
          (*fn)(event_to_dict(ev));
        } catch (py::error_already_set& e) {
          e.discard_as_unraisable("glmserve._engine token callback");
        }
      };
    }
    engine_->submit(request_id, std::move(ids), p, std::move(cb));
  }

  glm::Engine& engine() { return *engine_; }

  // Runs the step loop inline until every prompt finished.
  std::vector<std::vector<int32_t>> generate(const std::vector<std::vector<int32_t>>& prompts,
                                             const glm::SamplingParams& p,
                                             const std::vector<int>& arrival_steps) {
    const size_t n = prompts.size();
    if (!arrival_steps.empty() && arrival_steps.size() != n)
      throw glm::EngineError("generate: arrival_steps has " + std::to_string(arrival_steps.size()) +
                             " entries for " + std::to_string(n) + " prompts");
    struct Slot {
      std::vector<int32_t> ids;
      bool done = false;
      std::string error;
    };
    auto slots = std::make_shared<std::vector<Slot>>(n);
    auto mu = std::make_shared<std::mutex>();
    const uint64_t base = next_generate_id_.fetch_add(n) + (uint64_t(1) << 62);
    std::vector<bool> submitted(n, false);
    size_t num_submitted = 0;
    auto finish_all = [&]() {
      for (size_t i = 0; i < n; ++i)
        if (submitted[i]) engine_->cancel(base + i);
      for (;;) {
        bool all = true;
        {
          std::lock_guard<std::mutex> lk(*mu);
          for (size_t i = 0; i < n; ++i) all = all && (!submitted[i] || (*slots)[i].done);
        }
        if (all) break;
        engine_->step();
      }
    };
    int64_t step_index = 0;
    for (;;) {
      for (size_t i = 0; i < n; ++i) {
        if (submitted[i] || (!arrival_steps.empty() && arrival_steps[i] > step_index)) continue;
        glm::SamplingParams pi = p;
        try {
          engine_->submit(base + i, prompts[i], pi, [slots, mu, i](const glm::TokenEvent& ev) {
            std::lock_guard<std::mutex> lk(*mu);
            Slot& s = (*slots)[i];
            s.ids.insert(s.ids.end(), ev.new_tokens.begin(), ev.new_tokens.end());
            if (ev.finished) {
              s.done = true;
              if (ev.reason == glm::FinishReason::kError) s.error = ev.error;
            }
          });
        } catch (const glm::EngineError& e) {
          finish_all();
          // Our internal request id means nothing to the caller: name the prompt instead.
          throw glm::EngineError("generate: prompt " + std::to_string(i) + ": " + e.detail(), e.code(),
                                 e.field());
        }
        submitted[i] = true;
        ++num_submitted;
      }
      bool all_done = num_submitted == n;
      {
        std::lock_guard<std::mutex> lk(*mu);
        for (size_t i = 0; i < n && all_done; ++i) all_done = (*slots)[i].done;
      }
      if (all_done) break;
      engine_->step();
      ++step_index;
    }
    std::vector<std::vector<int32_t>> out;
    for (size_t i = 0; i < n; ++i) {
      if (!(*slots)[i].error.empty())
        throw std::runtime_error("generate: prompt " + std::to_string(i) + " failed: " + (*slots)[i].error);
      out.push_back((*slots)[i].ids);
    }
    return out;
  }

 private:
  std::unique_ptr<glm::Engine> engine_;
  std::atomic<uint64_t> next_generate_id_{0};
};

// SamplingParams from keyword arguments named like its members (max_tokens,
// temperature, seed, stop, ...): the request contract's table binds each to its
// field. Unknown names raise TypeError; the engine checks the values.
glm::SamplingParams params_from(const py::kwargs& kwargs) {
  glm::SamplingParams p;
  size_t used = 0;
  glm::for_each_sampling_field(p, [&](const glm::RequestField& f, auto& member) {
    if (f.member != nullptr && kwargs.contains(f.member)) {
      member = kwargs[f.member].template cast<std::decay_t<decltype(member)>>();
      ++used;
    }
  });
  if (used != kwargs.size()) {
    for (auto item : kwargs) {
      const std::string key = py::str(item.first);
      bool known = false;
      glm::for_each_sampling_field(p, [&](const glm::RequestField& f, auto&) {
        known = known || (f.member != nullptr && key == f.member);
      });
      if (!known) throw py::type_error("unknown sampling argument '" + key + "'");
    }
  }
  return p;
}

// The keywords cuda_<field>=value of Engine(): EngineOptions::cuda, by name.
void set_cuda_tuning(glm::CudaTuning& cuda, const std::string& key, py::handle v) {
  if (key.rfind("cuda_", 0) != 0) throw py::type_error("Engine() got an unexpected keyword argument '" + key + "'");
  std::string text;
  if (py::isinstance<py::bool_>(v))
    text = v.cast<bool>() ? "true" : "false";
  else if (py::isinstance<py::int_>(v) || py::isinstance<py::str>(v))
    text = py::str(v);
  else
    throw py::type_error("Engine() keyword " + key + " must be a bool, an int or a str");
  glm::set_cuda_tuning(cuda, key.substr(5), text);
}

// EngineOptions from Engine()'s keywords: each named like its field, cuda_<name>
// for EngineOptions.cuda; anything else is a TypeError. Defaults: EngineOptions'.
glm::EngineOptions options_from(const std::string& checkpoint_dir, const py::kwargs& kwargs) {
  glm::EngineOptions o;
  o.checkpoint_dir = checkpoint_dir;
  for (const auto& item : kwargs) {
    const std::string key = py::str(item.first);
    const py::handle v = item.second;
    auto set = [&](auto& field) { field = v.cast<std::decay_t<decltype(field)>>(); };
    if (key == "device") set(o.device);
    else if (key == "device_id") set(o.device_id);
    else if (key == "dtype") set(o.dtype);
    else if (key == "int8") set(o.int8);
    else if (key == "fp8") set(o.fp8);
    else if (key == "kv_cache_dtype") set(o.kv_cache_dtype);
    else if (key == "random_weights") set(o.random_weights);
    else if (key == "weights_seed") set(o.weights_seed);
    else if (key == "block_size") set(o.block_size);
    else if (key == "num_kv_blocks") set(o.num_kv_blocks);
    else if (key == "kv_cache_fraction") set(o.kv_cache_fraction);
    else if (key == "kv_cache_bytes") set(o.kv_cache_bytes);
    else if (key == "max_running_seqs") set(o.max_running_seqs);
    else if (key == "max_batched_tokens") set(o.max_batched_tokens);
    else if (key == "max_queue") set(o.max_queue);
    else if (key == "num_threads") set(o.num_threads);
    else if (key == "use_cuda_graphs") set(o.use_cuda_graphs);
    else if (key == "overlap_steps") set(o.overlap_steps);
    else if (key == "adapters_dir") set(o.adapters_dir);
    else set_cuda_tuning(o.cuda, key, v);
  }
  return o;
}


py::list cuda_tuning_fields() {
  const glm::CudaTuning defaults;
  py::list out;
  for (const glm::CudaTuningField& f : glm::cuda_tuning_fields()) {
    py::dict d;
    d["name"] = f.name;
    d["type"] = f.flag ? "bool" : "int";
    if (f.flag)
      d["default"] = defaults.*f.flag;
    else
      d["default"] = defaults.*f.number;
    d["min"] = f.min;
    d["max"] = f.max;
    d["choices"] = f.choices;  // a number's only values; empty: any in [min, max]
    d["help"] = f.help;
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "The ChatGLM inference engine (C++): continuous batching, paged KV cache, cpu/cuda back-ends.";
  // EngineError (a ValueError) carries the typed error: .code ("invalid_argument",
  // "unavailable", "internal") and .field (the request field at fault, or "").
  static py::handle engine_error = py::exception<glm::EngineError>(m, "EngineError", PyExc_ValueError).release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const glm::EngineError& e) {
      py::object err = py::reinterpret_borrow<py::object>(engine_error)(e.what());
      err.attr("code") = glm::to_string(e.code());
      err.attr("field") = e.field();
      PyErr_SetObject(engine_error.ptr(), err.ptr());
    }
  });

  m.def(
      "render_token_texts",
      [](const std::string& checkpoint_dir, const std::vector<int32_t>& ids) {
        std::unique_ptr<glm::TokenTexts> texts = glm::TokenTexts::load(checkpoint_dir);
        if (!texts)
          throw glm::EngineError(checkpoint_dir + ": no " + glm::TokenTexts::kFileName);
        std::string out;
        bool started = false;
        for (int32_t id : ids) out += texts->render(id, &started);
        return py::bytes(out);
      },
      py::arg("checkpoint_dir"), py::arg("ids"),
      "The generated text of `ids` as the engine sees it (token_bytes.bin), for tests.");
  m.def(
      "checkpoint_weights",
      [](const std::string& checkpoint_dir) {
        const glm::ModelConfig cfg = glm::load_model_config(checkpoint_dir);
        const glm::ModelWeights w = glm::load_weights(checkpoint_dir, cfg);
        py::dict out;
        for (const auto& kv : w.by_name()) {
          const glm::TensorView& t = kv.second;
          py::array_t<float> values(std::vector<py::ssize_t>(t.shape.begin(), t.shape.end()));
          glm::to_float(t, values.mutable_data());
          out[py::str(kv.first)] = py::make_tuple(glm::dtype_name(t.dtype), values);
        }
        return out;
      },
      py::arg("checkpoint_dir"),
      "The checkpoint as the engine's loader reads and checks it: {name: (safetensors dtype, values as "
      "float32)}, quantized weights as their codes' values (scales beside them), for tests.");
  m.def("cuda_tuning_fields", &cuda_tuning_fields,
        "The CUDA tuning options (EngineOptions.cuda; Engine(cuda_<name>=...), the Triton parameter "
        "cuda_<name>): a list of dicts with name, type ('bool' or 'int'), default, min, max, choices "
        "(an int's only values; empty: any in [min, max]), help.");

  py::class_<PyEngine>(m, "Engine")
      .def(py::init([](const std::string& checkpoint_dir, const py::kwargs& options) {
             return std::make_unique<PyEngine>(options_from(checkpoint_dir, options));
           }),
           py::arg("checkpoint_dir"),
           "Engine(checkpoint_dir, **options): keywords named like EngineOptions' fields (device, dtype,\n"
           "int8, fp8, kv_cache_dtype, random_weights, weights_seed, block_size, num_kv_blocks, kv_cache_fraction, kv_cache_bytes,\n"
           "max_running_seqs, max_batched_tokens, max_queue, num_threads, use_cuda_graphs, overlap_steps,\n"
           "device_id, "
           "adapters_dir), left out: the engine's defaults; cuda_<field>=value sets EngineOptions.cuda\n"
           "(see cuda_tuning_fields()), a value being a bool, an int or its text.")
      .def(
          "submit",
          [](PyEngine& self, uint64_t request_id, std::vector<int32_t> input_ids, py::object callback,
             const py::kwargs& sampling) {
            py::function fn = callback.is_none() ? py::function() : py::reinterpret_borrow<py::function>(callback);
            if (!callback.is_none() && !PyCallable_Check(callback.ptr())) throw py::type_error("callback must be callable or None");
            const glm::SamplingParams p = params_from(sampling);
            if (callback.is_none()) {
              self.engine().submit(request_id, std::move(input_ids), p, nullptr);
            } else {
              self.submit(request_id, std::move(input_ids), fn, p);
            }
          },
          py::arg("request_id"), py::arg("input_ids"), py::arg("callback"),
          "Queues a request. Sampling keywords are SamplingParams' members (max_tokens, temperature, top_k, top_p,\n"
          "repetition_penalty, presence_penalty, frequency_penalty, seed, ignore_eos, n, logprobs, stop,\n"
          "stop_token_ids, include_stop_str_in_output); left out, the engine's default. callback(dict(request_id,\n"
          "choice, new_tokens, logprobs, choice_finished, finished, reason, error, trim_bytes, prompt_tokens,\n"
          "completion_tokens)) runs on the step thread.")
      .def("cancel", [](PyEngine& self, uint64_t id) { self.engine().cancel(id); }, py::arg("request_id"))
      .def(
          "step", [](PyEngine& self) { return self.engine().step(); }, py::call_guard<py::gil_scoped_release>(),
          "One scheduler iteration; False when there was nothing to do.")
      .def("start", [](PyEngine& self) { self.engine().start(); }, py::call_guard<py::gil_scoped_release>())
      .def("stop", [](PyEngine& self) { self.engine().stop(); }, py::call_guard<py::gil_scoped_release>())
      .def("stats",
           [](PyEngine& self) {
             glm::EngineStats s = self.engine().stats();
             py::dict d;
             d["running"] = s.running;
             d["waiting"] = s.waiting;
             d["kv_blocks_used"] = s.kv_blocks_used;
             d["kv_blocks_total"] = s.kv_blocks_total;
             d["tokens_generated"] = s.tokens_generated;
             d["requests_finished"] = s.requests_finished;
             d["steps"] = s.steps;
             d["max_batch_seen"] = s.max_batch_seen;
             d["healthy"] = s.healthy;
             d["preemptions"] = s.preemptions;
             d["kv_blocks_reserved"] = s.kv_blocks_reserved;
             return d;
           })
      .def("backend_description", [](PyEngine& self) { return self.engine().backend_description(); },
           "One line from the compute back-end (which int8 kernels run), empty if nothing to add.")
      .def("model_info",
           [](PyEngine& self) {
             glm::Engine::ModelInfo i = self.engine().model_info();
             py::dict d;
             d["vocab_size"] = i.vocab_size;
             d["hidden_size"] = i.hidden_size;
             d["num_layers"] = i.num_layers;
             d["max_sequence_length"] = i.max_sequence_length;
             d["eos_token_id"] = i.eos_token_id;
             d["bos_token_id"] = i.bos_token_id;
             d["gmask_token_id"] = i.gmask_token_id;
             d["mask_token_id"] = i.mask_token_id;
             return d;
           })
      .def(
          "debug_forward",
          [](PyEngine& self, const std::vector<std::vector<int32_t>>& chunks, const std::string& adapter) {
            std::vector<float> logits;
            {
              py::gil_scoped_release nogil;
              logits = self.engine().debug_forward(chunks, adapter);
            }
            const int64_t vocab = self.engine().model_info().vocab_size;
            const int64_t rows = static_cast<int64_t>(logits.size()) / vocab;
            py::array_t<float> out({rows, vocab});
            std::copy(logits.begin(), logits.end(), out.mutable_data());
            return out;
          },
          py::arg("chunks"), py::arg("adapter") = "",
          "Logits [sum of chunk lengths, vocab] of one sequence fed chunk by chunk (with an adapter's prefix).")
      .def("adapters", [](PyEngine& self) { return self.engine().adapters(); }, "The loaded adapters' names.")
      .def("inject_fault", [](PyEngine& self) { self.engine().inject_fault(); })
      .def(
          "generate",
          [](PyEngine& self, const std::vector<std::vector<int32_t>>& prompts,
             std::optional<std::vector<int>> arrival_steps, const py::kwargs& sampling) {
            const glm::SamplingParams p = params_from(sampling);
            if (p.n != 1) throw glm::EngineError("generate: n must be 1 (use submit for several choices)", glm::ErrorCode::kInvalidArgument, "n");
            py::gil_scoped_release nogil;
            return self.generate(prompts, p, arrival_steps ? *arrival_steps : std::vector<int>());
          },
          py::arg("prompts"), py::arg("arrival_steps") = py::none(),
          "Generates for every prompt (each with the same sampling keywords as submit, and the same seed),\n"
          "stepping inline; returns the new ids.");
}
