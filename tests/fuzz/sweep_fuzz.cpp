// libFuzzer target: a sweep space (text proto) and a sweep state file (sweep.json) yield a Status
// or a value, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llmtrain/spec/sweep.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)llmtrain::spec::ParseSweepSpace("fuzz/space.textproto", text);
  (void)llmtrain::spec::ParseSweepState("fuzz/sweep.json", text);
  return 0;
}
