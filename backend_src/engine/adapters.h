// glm::PrefixAdapter: the P-Tuning v2 prefixes a server runs with, read at start
// from <adapters_dir>/<name>/ (adapter format 1, docs/adapters.md, written by
// `python -m glmserve.convert --ptuning ...`): adapter.json + prefix.safetensors
// with F32 prefix.key / prefix.value [num_layers, pre_seq_len, hidden_size].
//
// A request that names an adapter attends, in every layer, to the adapter's
// pre_seq_len keys and values before its own tokens (no rotary on them; every
// token sees all of them; the tokens' positions are unchanged). The engine keeps
// each adapter's K/V once, in KV-cache blocks every such request shares.
#pragma once

#include <string>
#include <vector>

#include "config.h"

namespace glm {

struct PrefixAdapter {
  std::string name;
  int prefix_len = 0;      // pre_seq_len
  std::vector<float> key;  // [num_layers, prefix_len, hidden_size]
  std::vector<float> value;
};

// Every adapter under `dir` (sorted by name); empty when `dir` is "" or does not
// exist. Throws EngineError naming the file and field for a malformed adapter or
// one whose sizes differ from `cfg`.
std::vector<PrefixAdapter> load_adapters(const std::string& dir, const ModelConfig& cfg);

// Adapter names are [A-Za-z0-9_.-]{1,64}, not "." or "..".
bool valid_adapter_name(const std::string& name);

}  // namespace glm
