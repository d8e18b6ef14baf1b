#include "stop_filter.h"

#include <algorithm>

namespace glm {

StopFilter::StopFilter(const TokenTexts* texts, std::vector<std::string> stop, std::vector<int32_t> stop_ids,
                       bool include_stop)
    : texts_(texts), stop_(std::move(stop)), stop_ids_(std::move(stop_ids)), include_stop_(include_stop) {
  std::sort(stop_ids_.begin(), stop_ids_.end());
  stop_.erase(std::remove(stop_.begin(), stop_.end(), std::string()), stop_.end());
  for (const std::string& s : stop_) {
    // fail[k] = length of the longest proper border of s[0, k).
    std::vector<int> fail(s.size() + 1, 0);
    for (size_t k = 1, b = 0; k < s.size(); ++k) {
      while (b > 0 && s[k] != s[b]) b = static_cast<size_t>(fail[b]);
      if (s[k] == s[b]) ++b;
      fail[k + 1] = static_cast<int>(b);
    }
    fail_.push_back(std::move(fail));
  }
  matched_.assign(stop_.size(), 0);
}

StopFilter::Result StopFilter::push(int32_t id) {
  Result r;
  std::string_view piece;
  if (texts_) piece = texts_->render(id, &started_);
  const int64_t start_of_piece = total_;
  total_ += static_cast<int64_t>(piece.size());
  ends_.push_back(total_);

  if (std::binary_search(stop_ids_.begin(), stop_ids_.end(), id)) {
    r.stopped = true;
    r.trim_bytes = include_stop_ ? 0 : static_cast<int>(piece.size());
  }
  // Byte by byte: the first byte at which a stop string completes ends the
  // choice (of strings completing there, the longest counts).
  for (size_t j = 0; j < piece.size() && !r.stopped; ++j) {
    int64_t match_len = 0;
    for (size_t i = 0; i < stop_.size(); ++i) {
      const std::string& s = stop_[i];
      int m = matched_[i];
      while (m > 0 && s[static_cast<size_t>(m)] != piece[j]) m = fail_[i][static_cast<size_t>(m)];
      if (s[static_cast<size_t>(m)] == piece[j]) ++m;
      if (m == static_cast<int>(s.size())) {
        match_len = std::max<int64_t>(match_len, m);
        m = fail_[i][static_cast<size_t>(m)];
      }
      matched_[i] = m;
    }
    if (match_len > 0) {
      const int64_t end = start_of_piece + static_cast<int64_t>(j) + 1;
      r.stopped = true;
      r.trim_bytes = static_cast<int>(total_ - (include_stop_ ? end : end - match_len));
    }
  }
  if (!r.stopped && !stop_.empty()) {
    // Hold back the ids that produced the longest tail that may begin a stop string.
    const int64_t hold_from = total_ - *std::max_element(matched_.begin(), matched_.end());
    while (!ends_.empty() && ends_.front() <= hold_from) {
      ends_.pop_front();
      ++r.release;
    }
    return r;
  }
  // Stopped, or no stop strings: everything goes out.
  r.release = static_cast<int>(ends_.size());
  ends_.clear();
  return r;
}

}  // namespace glm
