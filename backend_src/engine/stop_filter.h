// glm::StopFilter: one choice's stop strings, stop ids and streaming hold-back.
//
// Fed every generated id in order, it decides how many of the ids not yet
// released may be released now, and whether a stop ended the choice:
//   - a stop id ends it at once (the id is released; its text is cut unless
//     include_stop_str_in_output);
//   - a stop string ends it as soon as the generated text contains it, whatever
//     ids produced it (several ids, or a multi-byte character split over byte
//     pieces). trim_bytes = the text's bytes from the stop string's start (from
//     its end with include_stop_str_in_output) to the end of the text: the last
//     event's reader cuts them;
//   - otherwise the ids whose text may still begin a stop string are held back
//     (the longest tail of the text that is a proper prefix of a stop string and
//     every id that produced part of it); the rest are released.
// The text is the decoded text of the generated ids (TokenTexts::render). A stop
// string that only appears after the detokenizer's repairs (a <n> marker spelled
// over several pieces, invalid UTF-8 turned into U+FFFD) is not matched.
#pragma once

#include <cstdint>
#include <deque>
#include <string_view>
#include <string>
#include <vector>

#include "token_texts.h"

namespace glm {

class StopFilter {
 public:
  // `texts` may be null only when `stop` is empty.
  StopFilter(const TokenTexts* texts, std::vector<std::string> stop, std::vector<int32_t> stop_ids,
             bool include_stop);

  struct Result {
    int release = 0;       // how many of the oldest unreleased ids to release now
    bool stopped = false;  // a stop string or stop id ended the choice (release = all)
    int trim_bytes = 0;    // when stopped: bytes to cut from the end of the text
  };
  // The next generated id.
  Result push(int32_t id);
  // How many ids are held back now (released at the end unless a stop cuts them).
  int held() const { return static_cast<int>(ends_.size()); }

 private:
  // Knuth-Morris-Pratt over the text's bytes, one automaton per stop string:
  // matched_[i] = the longest prefix of stop_[i] that the text ends with.
  const TokenTexts* texts_;
  std::vector<std::string> stop_;
  std::vector<std::vector<int>> fail_;  // per stop string: KMP failure function
  std::vector<int> matched_;
  std::vector<int32_t> stop_ids_;  // sorted
  bool include_stop_;
  bool started_ = false;           // text was produced (sentencepiece's leading-space rule)
  int64_t total_ = 0;              // bytes of text so far
  std::deque<int64_t> ends_;       // per unreleased id: the text offset where its bytes end
};

}  // namespace glm
