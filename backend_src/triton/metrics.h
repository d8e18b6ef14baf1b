// Custom Prometheus metrics of the chatglm backend (served on Triton's metrics
// port next to Triton's own nv_* metrics). Families live as long as the
// backend; each model instance gets its own labelled metrics.
//
//   glm_generated_tokens_total        counter   tokens sent to clients
//   glm_requests_total{outcome=...}   counter   finished requests: ok, cancelled, error, rejected
//   glm_running_sequences             gauge     sequences in the engine's running batch
//   glm_waiting_sequences             gauge     requests queued in the engine
//   glm_active_requests               gauge     requests the backend holds (submitted, not final)
//   glm_kv_blocks_used / _total       gauge     paged KV cache blocks
//   glm_max_batch_size                gauge     most sequences in one engine step so far
//   glm_engine_steps_total            counter   engine steps
//   glm_engine_tokens_total           counter   tokens the engine generated (cancelled ones too)
//   glm_engine_healthy                gauge     1, or 0 after an unrecoverable engine fault
//   glm_time_to_first_token_seconds   histogram submit -> first token
//
// Labels: model, version, instance, device; glm_generated_tokens_total and
// glm_requests_total also by adapter ("base" for none, else a loaded adapter's
// name). When Triton runs with metrics disabled, everything here is a no-op.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine.h"
#include "triton_api.h"

namespace glmtriton {

// Every family, in the order of kFamilySpecs in metrics.cc.
enum class Family {
  kTokens = 0,    // per adapter
  kRequests,      // per adapter and outcome
  kRunning,
  kWaiting,
  kActive,
  kKvUsed,
  kKvTotal,
  kMaxBatch,
  kSteps,
  kEngineTokens,
  kHealthy,
  kTtft,          // histogram
  kCount
};
constexpr int kFamilyCount = static_cast<int>(Family::kCount);

class MetricFamilies {
 public:
  // Never throws; families that cannot be created stay null (logged once).
  MetricFamilies();
  ~MetricFamilies();
  MetricFamilies(const MetricFamilies&) = delete;
  MetricFamilies& operator=(const MetricFamilies&) = delete;

  TRITONSERVER_MetricFamily* get(Family f) const { return families_[static_cast<int>(f)]; }

 private:
  TRITONSERVER_MetricFamily* families_[kFamilyCount] = {};
};

enum class Outcome { kOk = 0, kCancelled, kError, kRejected, kCount };

class InstanceMetrics {
 public:
  // Labels: model, version, instance and device ("cpu" or "cuda:<id>"): Triton gives the
  // instances of one group on different GPUs the same name, the device tells them apart.
  InstanceMetrics(MetricFamilies* families, const std::string& model, uint64_t version,
                  const std::string& instance, const std::string& device,
                  const std::vector<std::string>& adapters);
  ~InstanceMetrics();
  InstanceMetrics(const InstanceMetrics&) = delete;
  InstanceMetrics& operator=(const InstanceMetrics&) = delete;

  // `adapter`: "" for the base model; an unknown name counts as the base model.
  void add_tokens(size_t n, const std::string& adapter = "");
  void add_request(Outcome outcome, const std::string& adapter = "");
  void observe_ttft(double seconds);
  void set_active(size_t n);
  // Gauges + step counter from the engine's stats.
  void update(const glm::EngineStats& stats);

 private:
  struct PerAdapter {
    TRITONSERVER_Metric* tokens = nullptr;
    TRITONSERVER_Metric* requests[static_cast<int>(Outcome::kCount)] = {};
  };
  PerAdapter& of(const std::string& adapter);
  TRITONSERVER_Metric*& metric(Family f) { return per_instance_[static_cast<int>(f)]; }

  std::map<std::string, PerAdapter> by_adapter_;  // "" = the base model
  // Families labelled by instance only (kTokens and kRequests slots stay null).
  TRITONSERVER_Metric* per_instance_[kFamilyCount] = {};
  int64_t steps_seen_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace glmtriton
