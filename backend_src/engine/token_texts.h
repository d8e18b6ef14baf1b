// glm::TokenTexts: the text of every id as the tokenizer decodes it, read from a
// converted checkpoint's token_bytes.bin (written by glmserve/token_texts.py from
// ice_text.model). The engine matches stop strings on it (stop_filter.h).
//
// File format (little-endian): the 8 bytes "GLMTOKB1", uint32 count, then per id
// 0..count-1: uint8 kind, uint32 length, `length` bytes. Kinds: 0 text (a piece's
// text: "▁" as a space, whole-piece markers such as <n> as the whitespace they
// stand for), 1 skip (special ids: no text), 2 byte (one byte-fallback byte),
// 3 unknown (<unk>'s surface text), 4 text that begins with sentencepiece's "▁"
// (dropped when it is the first text of a generation). Ids outside [0, count)
// produce no text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace glm {

class TokenTexts {
 public:
  enum Kind : uint8_t { kText = 0, kSkip = 1, kByte = 2, kUnknown = 3, kSpaceText = 4 };
  static constexpr const char* kFileName = "token_bytes.bin";

  // The table of <checkpoint_dir>/token_bytes.bin; nullptr when the file does not
  // exist. Throws EngineError naming the file when it is malformed.
  static std::unique_ptr<TokenTexts> load(const std::string& checkpoint_dir);
  // Parses the file's contents; `origin` names it in errors.
  static std::unique_ptr<TokenTexts> parse(const std::string& data, const std::string& origin);

  int size() const { return static_cast<int>(kinds_.size()); }
  Kind kind(int32_t id) const;
  std::string_view bytes(int32_t id) const;

  // The decoded text of `id` when it follows ids that `*started` says produced
  // text already (false at the start of a generation): sentencepiece drops the
  // leading space of the first text piece. Updates *started.
  std::string_view render(int32_t id, bool* started) const;

 private:
  std::vector<Kind> kinds_;
  std::vector<uint32_t> offsets_;  // size() + 1
  std::string data_;
};

}  // namespace glm
