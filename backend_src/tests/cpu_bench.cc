// A small driver for the engine without Python: loads a checkpoint (or random
// weights with the real shapes of a config.json), runs one batch of synthetic
// prompts and prints load, prefill and decode times. Used to show that the
// CPU back-end runs the full-size ChatGLM-6B.
//
//   cpu_bench --checkpoint DIR [--random-weights] [--device cpu] [--threads N]
//             [--batch B] [--prompt-len P] [--max-tokens T]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "engine.h"

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int main(int argc, char** argv) {
  glm::EngineOptions o;
  int batch = 1, prompt_len = 16, max_tokens = 8;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--checkpoint") o.checkpoint_dir = next();
    else if (a == "--random-weights") o.random_weights = true;
    else if (a == "--device") o.device = next();
    else if (a == "--dtype") o.dtype = next();
    else if (a == "--int8") o.int8 = true;
    else if (a == "--threads") o.num_threads = std::atoi(next().c_str());
    else if (a == "--batch") batch = std::atoi(next().c_str());
    else if (a == "--prompt-len") prompt_len = std::atoi(next().c_str());
    else if (a == "--max-tokens") max_tokens = std::atoi(next().c_str());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    auto t0 = Clock::now();
    auto engine = glm::Engine::create(o);
    const auto info = engine->model_info();
    std::printf("load: %.2f s (vocab %d, hidden %d, layers %d)\n", seconds_since(t0), info.vocab_size,
                info.hidden_size, info.num_layers);
    std::mutex mu;
    std::vector<std::vector<int32_t>> out(static_cast<size_t>(batch));
    int done = 0;
    glm::SamplingParams p;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    for (int b = 0; b < batch; ++b) {
      std::vector<int32_t> ids;
      for (int t = 0; t < prompt_len - 2; ++t) ids.push_back(100 + (b * 131 + t * 17) % 1000);
      ids.push_back(info.gmask_token_id);
      ids.push_back(info.bos_token_id);
      engine->submit(static_cast<uint64_t>(b), ids, p, [&, b](const glm::TokenEvent& ev) {
        std::lock_guard<std::mutex> lk(mu);
        auto& v = out[static_cast<size_t>(b)];
        v.insert(v.end(), ev.new_tokens.begin(), ev.new_tokens.end());
        if (ev.finished) ++done;
      });
    }
    t0 = Clock::now();
    engine->step();
    const double prefill = seconds_since(t0);
    t0 = Clock::now();
    int steps = 0;
    while (engine->step()) ++steps;
    const double decode = seconds_since(t0);
    std::printf("prefill %d x %d tokens: %.2f s\n", batch, prompt_len, prefill);
    std::printf("decode: %d steps of batch %d: %.3f s/step (%.2f tokens/s)\n", steps, batch,
                steps ? decode / steps : 0.0, steps ? batch * steps / decode : 0.0);
    std::printf("first ids:");
    for (int32_t id : out[0]) std::printf(" %d", id);
    std::printf("\nfinished %d/%d, kv blocks used after: %d\n", done, batch, engine->stats().kv_blocks_used);
    return done == batch ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
