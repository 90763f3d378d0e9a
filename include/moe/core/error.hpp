// moe/core/error.hpp — host-side errors that name the offending field and value.
//
// Every check on user input ends in one of these exceptions, with a message of the form
// "<field>: <what is wrong, with the values>", e.g. "top_k: k=3 exceeds num_experts=2".
// Device code never throws; device-side problems are recorded in flags and raised by the host.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moe {

// Base of every exception the library throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configuration value, a shape or a buffer handed in by the caller is unusable.
class invalid_argument : public error {
 public:
  using error::error;
};

// The numbers themselves are unusable (non-finite router logits, a NaN loss).
class numeric_error : public error {
 public:
  using error::error;
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  os.precision(9);
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

}  // namespace detail

// Throws moe::invalid_argument("<field>: <parts...>").
template <class... Parts>
[[noreturn]] void fail(const char* field, Parts&&... parts) {
  throw invalid_argument(detail::concat(field, ": ", std::forward<Parts>(parts)...));
}

// Throws unless `condition` holds.
template <class... Parts>
void require(bool condition, const char* field, Parts&&... parts) {
  if (!condition) fail(field, std::forward<Parts>(parts)...);
}

}  // namespace moe
