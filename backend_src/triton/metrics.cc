#include "metrics.h"

#include <vector>

#include "util.h"

namespace glmtriton {
namespace {

TRITONSERVER_MetricFamily* new_family(TRITONSERVER_MetricKind kind, const char* name,
                                      const char* help) {
  TRITONSERVER_MetricFamily* f = nullptr;
  TRITONSERVER_Error* err = TRITONSERVER_MetricFamilyNew(&f, kind, name, help);
  if (err != nullptr) {
    GLM_LOG_WARN(std::string("metric family ") + name + " not created: " +
                 TRITONSERVER_ErrorMessage(err));
    TRITONSERVER_ErrorDelete(err);
    return nullptr;
  }
  return f;
}

void delete_family(TRITONSERVER_MetricFamily* f) {
  if (f != nullptr) log_if_error(TRITONSERVER_MetricFamilyDelete(f), "deleting a metric family");
}

struct Labels {
  std::vector<TRITONSERVER_Parameter*> owned;
  Labels(const std::string& model, uint64_t version, const std::string& instance,
         const std::string& device) {
    std::string v = std::to_string(version);
    owned.push_back(TRITONSERVER_ParameterNew("model", TRITONSERVER_PARAMETER_STRING, model.c_str()));
    owned.push_back(TRITONSERVER_ParameterNew("version", TRITONSERVER_PARAMETER_STRING, v.c_str()));
    owned.push_back(
        TRITONSERVER_ParameterNew("instance", TRITONSERVER_PARAMETER_STRING, instance.c_str()));
    owned.push_back(TRITONSERVER_ParameterNew("device", TRITONSERVER_PARAMETER_STRING, device.c_str()));
  }
  void add(const char* key, const char* value) {
    owned.push_back(TRITONSERVER_ParameterNew(key, TRITONSERVER_PARAMETER_STRING, value));
  }
  ~Labels() {
    for (auto* p : owned) {
      if (p != nullptr) TRITONSERVER_ParameterDelete(p);
    }
  }
  std::vector<const TRITONSERVER_Parameter*> view() const {
    return std::vector<const TRITONSERVER_Parameter*>(owned.begin(), owned.end());
  }
};

TRITONSERVER_Metric* new_metric(TRITONSERVER_MetricFamily* family, const Labels& labels) {
  if (family == nullptr) return nullptr;
  auto v = labels.view();
  TRITONSERVER_Metric* m = nullptr;
  TRITONSERVER_Error* err = TRITONSERVER_MetricNew(&m, family, v.data(), v.size());
  if (err != nullptr) {
    log_if_error(err, "creating a metric");
    return nullptr;
  }
  return m;
}

void delete_metric(TRITONSERVER_Metric*& m) {
  if (m != nullptr) log_if_error(TRITONSERVER_MetricDelete(m), "deleting a metric");
  m = nullptr;
}

void inc(TRITONSERVER_Metric* m, double v) {
  if (m != nullptr) log_if_error(TRITONSERVER_MetricIncrement(m, v), "metric increment");
}

void set(TRITONSERVER_Metric* m, double v) {
  if (m != nullptr) log_if_error(TRITONSERVER_MetricSet(m, v), "metric set");
}

const char* kOutcomeNames[] = {"ok", "cancelled", "error", "rejected"};

}  // namespace

MetricFamilies::MetricFamilies() {
  tokens = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "glm_generated_tokens_total",
                      "Tokens generated and sent to clients");
  requests = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "glm_requests_total",
                        "Finished decoder requests by outcome (ok, cancelled, error, rejected)");
  running = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_running_sequences",
                       "Sequences in the engine's running batch");
  waiting = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_waiting_sequences",
                       "Requests waiting in the engine queue");
  active = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_active_requests",
                      "Requests held by the backend (submitted, final response not yet sent)");
  kv_used = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_kv_blocks_used",
                       "Paged KV cache blocks in use");
  kv_total = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_kv_blocks_total",
                        "Paged KV cache blocks in total");
  max_batch = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_max_batch_size",
                         "Largest number of sequences in one engine step since the model loaded");
  steps = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "glm_engine_steps_total",
                     "Engine steps (forward passes)");
  engine_tokens = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "glm_engine_tokens_total",
                             "Tokens the engine generated (held-back and cancelled ones included)");
  healthy = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "glm_engine_healthy",
                       "1 while the engine is healthy, 0 after an unrecoverable fault");
  ttft = new_family(TRITONSERVER_METRIC_KIND_HISTOGRAM, "glm_time_to_first_token_seconds",
                    "Time from submission to the first generated token");
}

MetricFamilies::~MetricFamilies() {
  for (auto* f : {tokens, requests, running, waiting, active, kv_used, kv_total, max_batch, steps, engine_tokens,
                  healthy, ttft}) {
    delete_family(f);
  }
}

InstanceMetrics::InstanceMetrics(MetricFamilies* f, const std::string& model, uint64_t version,
                                 const std::string& instance, const std::string& device,
                                 const std::vector<std::string>& adapters) {
  if (f == nullptr) return;
  Labels labels(model, version, instance, device);
  std::vector<std::string> names = {""};
  names.insert(names.end(), adapters.begin(), adapters.end());
  for (const std::string& name : names) {
    PerAdapter& a = by_adapter_[name];
    const std::string label = name.empty() ? "base" : name;
    Labels lt(model, version, instance, device);
    lt.add("adapter", label.c_str());
    a.tokens = new_metric(f->tokens, lt);
    for (int i = 0; i < static_cast<int>(Outcome::kCount); ++i) {
      Labels l(model, version, instance, device);
      l.add("adapter", label.c_str());
      l.add("outcome", kOutcomeNames[i]);
      a.requests[i] = new_metric(f->requests, l);
    }
  }
  running_ = new_metric(f->running, labels);
  waiting_ = new_metric(f->waiting, labels);
  active_ = new_metric(f->active, labels);
  kv_used_ = new_metric(f->kv_used, labels);
  kv_total_ = new_metric(f->kv_total, labels);
  max_batch_ = new_metric(f->max_batch, labels);
  steps_ = new_metric(f->steps, labels);
  engine_tokens_ = new_metric(f->engine_tokens, labels);
  healthy_ = new_metric(f->healthy, labels);
  if (f->ttft != nullptr) {
    static const double kBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0,   2.5,  5.0,   10.0, 30.0, 60.0};
    TRITONSERVER_MetricArgs* args = nullptr;
    TRITONSERVER_Error* err = TRITONSERVER_MetricArgsNew(&args);
    if (err == nullptr) {
      err = TRITONSERVER_MetricArgsSetHistogram(args, kBuckets,
                                                sizeof(kBuckets) / sizeof(kBuckets[0]));
    }
    if (err == nullptr) {
      auto v = labels.view();
      err = TRITONSERVER_MetricNewWithArgs(&ttft_, f->ttft, v.data(), v.size(), args);
    }
    if (args != nullptr) log_if_error(TRITONSERVER_MetricArgsDelete(args), "metric args");
    if (err != nullptr) {
      ttft_ = nullptr;
      log_if_error(err, "creating the time-to-first-token histogram");
    }
  }
  set(healthy_, 1.0);
}

InstanceMetrics::~InstanceMetrics() {
  for (auto& [name, a] : by_adapter_) {
    delete_metric(a.tokens);
    for (auto*& m : a.requests) delete_metric(m);
  }
  delete_metric(running_);
  delete_metric(waiting_);
  delete_metric(active_);
  delete_metric(kv_used_);
  delete_metric(kv_total_);
  delete_metric(max_batch_);
  delete_metric(steps_);
  delete_metric(engine_tokens_);
  delete_metric(healthy_);
  delete_metric(ttft_);
}

InstanceMetrics::PerAdapter& InstanceMetrics::of(const std::string& adapter) {
  auto it = by_adapter_.find(adapter);
  return it != by_adapter_.end() ? it->second : by_adapter_[""];
}

void InstanceMetrics::add_tokens(size_t n, const std::string& adapter) {
  if (n > 0) inc(of(adapter).tokens, static_cast<double>(n));
}

void InstanceMetrics::add_request(Outcome outcome, const std::string& adapter) {
  inc(of(adapter).requests[static_cast<int>(outcome)], 1.0);
}

void InstanceMetrics::observe_ttft(double seconds) {
  if (ttft_ != nullptr) log_if_error(TRITONSERVER_MetricObserve(ttft_, seconds), "metric observe");
}

void InstanceMetrics::set_active(size_t n) { set(active_, static_cast<double>(n)); }

void InstanceMetrics::update(const glm::EngineStats& s) {
  set(running_, s.running);
  set(waiting_, s.waiting);
  set(kv_used_, s.kv_blocks_used);
  set(kv_total_, s.kv_blocks_total);
  set(max_batch_, s.max_batch_seen);
  set(healthy_, s.healthy ? 1.0 : 0.0);
  if (s.steps > steps_seen_) {
    inc(steps_, static_cast<double>(s.steps - steps_seen_));
    steps_seen_ = s.steps;
  }
  if (s.tokens_generated > tokens_seen_) {
    inc(engine_tokens_, static_cast<double>(s.tokens_generated - tokens_seen_));
    tokens_seen_ = s.tokens_generated;
  }
}

}  // namespace glmtriton
