#include "token_texts.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "engine.h"

namespace glm {

namespace {

constexpr char kMagic[8] = {'G', 'L', 'M', 'T', 'O', 'K', 'B', '1'};

uint32_t read_u32(const std::string& d, size_t at) {
  uint32_t v = 0;
  for (int k = 3; k >= 0; --k) v = (v << 8) | static_cast<uint8_t>(d[at + static_cast<size_t>(k)]);
  return v;
}

}  // namespace

std::unique_ptr<TokenTexts> TokenTexts::load(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/" + kFileName;
  std::ifstream f(path, std::ios::binary);
  if (!f) return nullptr;
  std::ostringstream buf;
  buf << f.rdbuf();
  return parse(buf.str(), path);
}

std::unique_ptr<TokenTexts> TokenTexts::parse(const std::string& d, const std::string& origin) {
  auto bad = [&](const std::string& what) { return EngineError(origin + ": " + what); };
  if (d.size() < 12 || std::memcmp(d.data(), kMagic, sizeof(kMagic)) != 0)
    throw bad("not a token table (expected the header GLMTOKB1; re-convert the checkpoint)");
  const uint32_t count = read_u32(d, 8);
  auto t = std::make_unique<TokenTexts>();
  t->kinds_.reserve(count);
  t->offsets_.reserve(static_cast<size_t>(count) + 1);
  t->offsets_.push_back(0);
  size_t at = 12;
  for (uint32_t id = 0; id < count; ++id) {
    if (at + 5 > d.size()) throw bad("truncated at id " + std::to_string(id));
    const uint8_t kind = static_cast<uint8_t>(d[at]);
    if (kind > kSpaceText) throw bad("id " + std::to_string(id) + " has an unknown kind " + std::to_string(kind));
    const uint32_t len = read_u32(d, at + 1);
    at += 5;
    if (len > d.size() - at) throw bad("truncated at id " + std::to_string(id));
    if ((kind == kSkip && len != 0) || (kind == kByte && len != 1))
      throw bad("id " + std::to_string(id) + ": a " + (kind == kSkip ? "skip" : "byte") + " entry of " +
                std::to_string(len) + " bytes");
    t->kinds_.push_back(static_cast<Kind>(kind));
    t->data_.append(d, at, len);
    t->offsets_.push_back(static_cast<uint32_t>(t->data_.size()));
    at += len;
  }
  if (at != d.size()) throw bad(std::to_string(d.size() - at) + " trailing bytes after " + std::to_string(count) + " ids");
  return t;
}

TokenTexts::Kind TokenTexts::kind(int32_t id) const {
  return id >= 0 && id < size() ? kinds_[static_cast<size_t>(id)] : kSkip;
}

std::string_view TokenTexts::bytes(int32_t id) const {
  if (id < 0 || id >= size()) return {};
  const size_t i = static_cast<size_t>(id);
  return std::string_view(data_).substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
}

std::string_view TokenTexts::render(int32_t id, bool* started) const {
  const Kind k = kind(id);
  if (k == kSkip) return {};
  std::string_view b = bytes(id);
  if (!*started && k == kSpaceText && !b.empty()) b.remove_prefix(1);
  *started = true;
  return b;
}

}  // namespace glm
