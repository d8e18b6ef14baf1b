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

struct FamilySpec {
  TRITONSERVER_MetricKind kind;
  const char* name;
  const char* help;
};

// Indexed by Family.
constexpr FamilySpec kFamilySpecs[kFamilyCount] = {
    {TRITONSERVER_METRIC_KIND_COUNTER, "glm_generated_tokens_total",
     "Tokens generated and sent to clients"},
    {TRITONSERVER_METRIC_KIND_COUNTER, "glm_requests_total",
     "Finished decoder requests by outcome (ok, cancelled, error, rejected)"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_running_sequences",
     "Sequences in the engine's running batch"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_waiting_sequences",
     "Requests waiting in the engine queue"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_active_requests",
     "Requests held by the backend (submitted, final response not yet sent)"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_kv_blocks_used", "Paged KV cache blocks in use"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_kv_blocks_total", "Paged KV cache blocks in total"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_max_batch_size",
     "Largest number of sequences in one engine step since the model loaded"},
    {TRITONSERVER_METRIC_KIND_COUNTER, "glm_engine_steps_total", "Engine steps (forward passes)"},
    {TRITONSERVER_METRIC_KIND_COUNTER, "glm_engine_tokens_total",
     "Tokens the engine generated (held-back and cancelled ones included)"},
    {TRITONSERVER_METRIC_KIND_GAUGE, "glm_engine_healthy",
     "1 while the engine is healthy, 0 after an unrecoverable fault"},
    {TRITONSERVER_METRIC_KIND_HISTOGRAM, "glm_time_to_first_token_seconds",
     "Time from submission to the first generated token"},
};

TRITONSERVER_Metric* new_histogram(TRITONSERVER_MetricFamily* family, const Labels& labels) {
  if (family == nullptr) return nullptr;
  static const double kBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1,  0.25, 0.5,
                                    1.0,   2.5,  5.0,   10.0, 30.0, 60.0};
  TRITONSERVER_Metric* m = nullptr;
  TRITONSERVER_MetricArgs* args = nullptr;
  TRITONSERVER_Error* err = TRITONSERVER_MetricArgsNew(&args);
  if (err == nullptr) {
    err = TRITONSERVER_MetricArgsSetHistogram(args, kBuckets, sizeof(kBuckets) / sizeof(kBuckets[0]));
  }
  if (err == nullptr) {
    auto v = labels.view();
    err = TRITONSERVER_MetricNewWithArgs(&m, family, v.data(), v.size(), args);
  }
  if (args != nullptr) log_if_error(TRITONSERVER_MetricArgsDelete(args), "metric args");
  if (err != nullptr) {
    log_if_error(err, "creating a histogram");
    return nullptr;
  }
  return m;
}

}  // namespace

MetricFamilies::MetricFamilies() {
  for (int i = 0; i < kFamilyCount; ++i) {
    families_[i] = new_family(kFamilySpecs[i].kind, kFamilySpecs[i].name, kFamilySpecs[i].help);
  }
}

MetricFamilies::~MetricFamilies() {
  for (auto* f : families_) delete_family(f);
}

InstanceMetrics::InstanceMetrics(MetricFamilies* f, const std::string& model, uint64_t version,
                                 const std::string& instance, const std::string& device,
                                 const std::vector<std::string>& adapters) {
  if (f == nullptr) return;
  std::vector<std::string> names = {""};
  names.insert(names.end(), adapters.begin(), adapters.end());
  for (const std::string& name : names) {
    PerAdapter& a = by_adapter_[name];
    const std::string label = name.empty() ? "base" : name;
    Labels lt(model, version, instance, device);
    lt.add("adapter", label.c_str());
    a.tokens = new_metric(f->get(Family::kTokens), lt);
    for (int i = 0; i < static_cast<int>(Outcome::kCount); ++i) {
      Labels l(model, version, instance, device);
      l.add("adapter", label.c_str());
      l.add("outcome", kOutcomeNames[i]);
      a.requests[i] = new_metric(f->get(Family::kRequests), l);
    }
  }
  Labels labels(model, version, instance, device);
  for (int i = static_cast<int>(Family::kRunning); i < kFamilyCount; ++i) {
    const Family fam = static_cast<Family>(i);
    metric(fam) = fam == Family::kTtft ? new_histogram(f->get(fam), labels)
                                       : new_metric(f->get(fam), labels);
  }
  set(metric(Family::kHealthy), 1.0);
}

InstanceMetrics::~InstanceMetrics() {
  for (auto& [name, a] : by_adapter_) {
    delete_metric(a.tokens);
    for (auto*& m : a.requests) delete_metric(m);
  }
  for (auto*& m : per_instance_) delete_metric(m);
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
  TRITONSERVER_Metric* m = metric(Family::kTtft);
  if (m != nullptr) log_if_error(TRITONSERVER_MetricObserve(m, seconds), "metric observe");
}

void InstanceMetrics::set_active(size_t n) { set(metric(Family::kActive), static_cast<double>(n)); }

void InstanceMetrics::update(const glm::EngineStats& s) {
  set(metric(Family::kRunning), s.running);
  set(metric(Family::kWaiting), s.waiting);
  set(metric(Family::kKvUsed), s.kv_blocks_used);
  set(metric(Family::kKvTotal), s.kv_blocks_total);
  set(metric(Family::kMaxBatch), s.max_batch_seen);
  set(metric(Family::kHealthy), s.healthy ? 1.0 : 0.0);
  if (s.steps > steps_seen_) {
    inc(metric(Family::kSteps), static_cast<double>(s.steps - steps_seen_));
    steps_seen_ = s.steps;
  }
  if (s.tokens_generated > tokens_seen_) {
    inc(metric(Family::kEngineTokens), static_cast<double>(s.tokens_generated - tokens_seen_));
    tokens_seen_ = s.tokens_generated;
  }
}

}  // namespace glmtriton
